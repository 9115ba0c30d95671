//! What the page does: loading models and data, starting, pausing and resuming runs,
//! exports and imports — the [`App`](crate::app::App) state's actions, which the panels call.

use crate::app::*;
use crate::bridge;
use crate::form::Form;
use crate::panels::preflight::preflight;
use leptos::prelude::*;
use leptos::task::spawn_local;
use tunelab_core::models::ModelConfig;
use tunelab_core::trainer::TaskKind;
use tunelab_web::protocol::{DataFile, Event, Request, RunSpec};

impl App {
    pub(crate) fn new() -> Self {
        let query = web_sys::window()
            .and_then(|w| w.location().search().ok())
            .unwrap_or_default();
        Self {
            form: RwSignal::new(Form::from_query(&query)),
            manifest: RwSignal::new(None),
            model: RwSignal::new(None),
            model_config: RwSignal::new(None),
            dataset: RwSignal::new(None),
            data_error: RwSignal::new(None),
            upload: RwSignal::new(None),
            backend: RwSignal::new(None),
            saved: RwSignal::new(None),
            lost: RwSignal::new(false),
            status: RwSignal::new("Starting the training worker…".into()),
            error: RwSignal::new(None),
            run: RwSignal::new(RunView::default()),
            prediction: RwSignal::new(None),
            generated: RwSignal::new(String::new()),
            generating: RwSignal::new(false),
            generation_done: RwSignal::new(None),
            exported: RwSignal::new(None),
            imported: RwSignal::new(None),
            notice: RwSignal::new(None),
            past: RwSignal::new(Vec::new()),
        }
    }

    pub(crate) fn on_event(self, e: Event, payload: Option<Vec<u8>>) {
        match e {
            Event::Status { message } => {
                if message == "worker started" {
                    let f = self.form.get_untracked();
                    bridge::send(&Request::Hello {
                        force_cpu: f.cpu,
                        force_gpu: f.gpu,
                    });
                    self.status
                        .set("Asking the browser for a WebGPU adapter…".into());
                } else {
                    self.status.set(message);
                }
            }
            Event::Ready {
                backend,
                saved,
                past,
                ..
            } => {
                self.past.set(past);
                self.backend.set(Some(backend));
                self.saved.set(saved.map(|s| *s));
                self.status.set("Ready.".into());
            }
            Event::ModelSaved { facts } => {
                self.model_config
                    .set(ModelConfig::from_json("config.json", &facts.config_json).ok());
                self.model.set(Some(ModelChoice::User(facts)));
                self.status
                    .set("Your model is stored in this browser.".into());
            }
            Event::Started {
                backend,
                total_steps,
                trainable,
                parameters,
                train_examples,
                validation_examples,
                labels,
                skipped,
                cached,
                resumed,
            } => {
                self.saved.set(None);
                self.lost.set(false);
                self.error.set(None);
                self.run.update(|r| {
                    r.phase = Phase::Training;
                    r.total = total_steps;
                    r.trainable = trainable;
                    r.parameters = parameters;
                    r.train_examples = train_examples;
                    r.validation_examples = validation_examples;
                    r.labels = labels;
                    r.backend = Some(backend.clone());
                    r.cached = cached;
                    r.resumed_at = resumed
                        .as_ref()
                        .map(|h| h.steps.last().map(|p| p.report.step).unwrap_or(0));
                    r.history = resumed.unwrap_or_default();
                });
                self.backend.set(Some(backend));
                self.status.set(if skipped > 0 {
                    format!("Training. Skipped {skipped} bad row(s).")
                } else {
                    "Training.".into()
                });
            }
            Event::Step { point } => {
                let t = now_ms();
                self.run.update(|r| {
                    if r.first_step_ms.is_none() {
                        r.first_step_ms = Some(t);
                    }
                    r.history.steps.push(point);
                });
            }
            Event::Eval { step, report } => {
                self.run.update(|r| r.history.evals.push((step, *report)));
                self.status.set(format!("Evaluated at step {step}."));
            }
            Event::Checkpoint { step } => self.run.update(|r| r.last_checkpoint = Some(step)),
            Event::Paused { step } => {
                self.run.update(|r| r.phase = Phase::Paused);
                self.status.set(format!(
                    "Paused at step {step}. The playground and export work now."
                ));
            }
            Event::Continued => {
                self.run.update(|r| r.phase = Phase::Training);
                self.status.set("Training.".into());
            }
            Event::Finished {
                stopped,
                step,
                record,
            } => {
                self.past.update(|p| p.push(*record));
                self.run.update(|r| {
                    r.phase = if stopped {
                        Phase::Stopped
                    } else {
                        Phase::Finished
                    }
                });
                self.status.set(if stopped {
                    format!("Stopped at step {step}.")
                } else {
                    format!("Finished {step} steps.")
                });
            }
            Event::Prediction { prediction, .. } => self.prediction.set(Some(prediction)),
            Event::Generated { piece } => self.generated.update(|t| t.push_str(&piece)),
            Event::GenerationDone {
                generation,
                tokens_per_s,
            } => {
                self.generating.set(false);
                self.generation_done.set(Some((
                    generation.stop,
                    generation.ids.len(),
                    tokens_per_s,
                )));
            }
            Event::Exported { file_name, files } => {
                if let Some(bytes) = payload {
                    download(&file_name, &bytes);
                }
                self.exported.set(Some((file_name, files)));
            }
            Event::Imported {
                method,
                task,
                labels,
            } => {
                // Earlier predictions belonged to the previous model.
                self.prediction.set(None);
                self.imported.set(Some(format!(
                    "Imported a {method} adapter for {} with labels {}.",
                    kind_name(task),
                    labels.join(", ")
                )));
                self.run.update(|r| {
                    r.kind = Some(task);
                    if r.phase == Phase::Idle {
                        r.phase = Phase::Finished;
                    }
                });
            }
            Event::Discarded => {
                self.saved.set(None);
                self.status.set("The interrupted run was discarded.".into());
            }
            Event::Deleted => {
                self.saved.set(None);
                self.past.set(Vec::new());
                self.run.set(RunView::default());
                self.prediction.set(None);
                self.exported.set(None);
                self.notice.set(Some(
                    "Deleted every model, dataset, checkpoint and run this app kept in your browser."
                        .into(),
                ));
            }
            Event::DeviceLost { message, saved } => {
                self.run.update(|r| r.phase = Phase::Failed);
                self.error.set(Some(message));
                self.lost.set(true);
                self.saved.set(saved.map(|s| *s));
            }
            Event::Error { message } => {
                self.generating.set(false);
                self.run.update(|r| {
                    if matches!(r.phase, Phase::Loading | Phase::Training) {
                        r.phase = Phase::Failed;
                    }
                });
                self.error.set(Some(message));
            }
        }
    }

    /// Loads a sample dataset for the preview.
    pub(crate) fn load_sample(self, id: String) {
        let Some(m) = self.manifest.get_untracked() else {
            return;
        };
        let Some(card) = m.dataset(&id).cloned() else {
            self.data_error
                .set(Some(format!("there is no sample dataset `{id}`")));
            return;
        };
        let skip = self.form.get_untracked().skip_bad;
        spawn_local(async move {
            self.data_error.set(None);
            let get = |split: &str| card.splits.get(split).map(|f| f.path.clone());
            let Some(train_path) = get("train") else {
                return;
            };
            let load = async |path: String| -> Result<DataFile, String> {
                let text = fetch_text(&format!("assets/{path}")).await?;
                Ok(DataFile {
                    name: path.rsplit('/').next().unwrap_or(&path).to_string(),
                    text,
                })
            };
            let train = match load(train_path).await {
                Ok(t) => t,
                Err(e) => return self.data_error.set(Some(e)),
            };
            let validation = match get("validation") {
                Some(p) => match load(p).await {
                    Ok(v) => Some(v),
                    Err(e) => return self.data_error.set(Some(e)),
                },
                None => None,
            };
            let labels = (!card.labels.is_empty()).then(|| card.labels.clone());
            match preview(&card.title, task_of(&card), train, validation, labels, skip) {
                Ok(d) => self.dataset.set(Some(d)),
                Err(e) => self.data_error.set(Some(e)),
            }
        });
    }

    /// Previews an uploaded file as `kind`.
    pub(crate) fn load_upload(self, kind: TaskKind) {
        let Some((name, text)) = self.upload.get_untracked() else {
            return;
        };
        let skip = self.form.get_untracked().skip_bad;
        self.data_error.set(None);
        let train = DataFile {
            name: name.clone(),
            text,
        };
        match preview(&name, kind, train, None, None, skip) {
            Ok(d) => self.dataset.set(Some(d)),
            Err(e) => {
                self.dataset.set(None);
                self.data_error.set(Some(e));
            }
        }
    }

    pub(crate) fn start(self) {
        self.error.set(None);
        let f = self.form.get_untracked();
        let Some(model) = self.model.get_untracked() else {
            return self.error.set(Some("choose a model first".into()));
        };
        let Some(d) = self.dataset.get_untracked() else {
            return self
                .error
                .set(Some("choose or upload a dataset first".into()));
        };
        // The preflight's refusal holds even if the button was enabled a moment ago.
        if let Some(why) = untrack(|| preflight(self)).and_then(|c| c.refusal()) {
            return self.error.set(Some(why));
        }
        let source = model.source();
        let kind = effective_kind(d.kind, self.model_config.get_untracked().as_ref());
        let config = match f.train_config(source.name(), kind) {
            Ok(c) => c,
            Err(e) => return self.error.set(Some(e)),
        };
        let spec = RunSpec {
            model: source,
            kind,
            dataset: d.title.clone(),
            train: d.train.clone(),
            validation: d.validation.clone(),
            labels: d.labels.clone(),
            holdout: HOLDOUT,
            config,
            force_cpu: f.cpu,
            force_gpu: f.gpu,
        };
        self.run.set(RunView {
            phase: Phase::Loading,
            kind: Some(kind),
            ..RunView::default()
        });
        self.prediction.set(None);
        self.exported.set(None);
        bridge::send(&Request::Start {
            spec: Box::new(spec),
        });
    }
}
