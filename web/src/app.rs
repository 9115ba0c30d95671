//! The page: model → data → task and method → preflight → train → evaluate → try it →
//! export, with the run persisted by the worker and the options in the URL.

use crate::bridge;
use crate::chart::LineChart;
use crate::form::{self, Form, mib};
use leptos::prelude::*;
use leptos::task::spawn_local;
use tunelab_core::data::{self, Example, Format, Labels, ParseOptions};
use tunelab_core::metrics::Confusion;
use tunelab_core::models::ModelConfig;
use tunelab_core::predict::Prediction;
use tunelab_core::session::holdout;
use tunelab_core::trainer::{EvalReport, TaskKind};
use tunelab_core::{DatasetCard, Manifest};
use tunelab_web::protocol::{
    BackendInfo, DataFile, Event, History, ModelFacts, ModelSource, PastRun, Request, RunSpec,
    SavedRun, StepPoint,
};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{DragEvent, File, HtmlInputElement};

/// Held-out share of an uploaded training file when there is no validation file.
const HOLDOUT: f64 = 0.1;

/// A dataset ready to train on, with its preview.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub title: String,
    pub kind: TaskKind,
    pub train: DataFile,
    pub validation: Option<DataFile>,
    pub labels: Option<Vec<String>>,
    pub preview: Vec<(usize, String, String)>,
    pub counts: Vec<(String, usize)>,
    pub n_train: usize,
    pub n_validation: usize,
    pub skipped: Vec<String>,
}

/// Where the run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Loading,
    Training,
    Paused,
    Finished,
    Stopped,
    Failed,
}

/// The run as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    pub phase: Phase,
    pub total: u64,
    pub trainable: usize,
    pub parameters: usize,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub labels: Vec<String>,
    pub history: History,
    pub backend: Option<BackendInfo>,
    pub cached: bool,
    pub resumed_at: Option<u64>,
    pub last_checkpoint: Option<u64>,
    /// Milliseconds from page load to the first step's report.
    pub first_step_ms: Option<f64>,
    pub kind: Option<TaskKind>,
}

impl Default for RunView {
    fn default() -> Self {
        Self {
            phase: Phase::Idle,
            total: 0,
            trainable: 0,
            parameters: 0,
            train_examples: 0,
            validation_examples: 0,
            labels: Vec::new(),
            history: History::default(),
            backend: None,
            cached: false,
            resumed_at: None,
            last_checkpoint: None,
            first_step_ms: None,
            kind: None,
        }
    }
}

/// The model the page will train.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    Builtin {
        id: String,
        dir: String,
        parameters: u64,
        bytes: u64,
        architecture: String,
    },
    User(ModelFacts),
}

impl ModelChoice {
    fn source(&self) -> ModelSource {
        match self {
            Self::Builtin { id, dir, .. } => ModelSource::Builtin {
                id: id.clone(),
                dir: dir.clone(),
            },
            Self::User(f) => ModelSource::User {
                name: f.name.clone(),
            },
        }
    }
}

/// Every signal of the page.
#[derive(Clone, Copy)]
struct App {
    form: RwSignal<Form>,
    manifest: RwSignal<Option<Manifest>>,
    model: RwSignal<Option<ModelChoice>>,
    model_config: RwSignal<Option<ModelConfig>>,
    dataset: RwSignal<Option<Dataset>>,
    data_error: RwSignal<Option<String>>,
    upload: RwSignal<Option<(String, String)>>,
    backend: RwSignal<Option<BackendInfo>>,
    saved: RwSignal<Option<SavedRun>>,
    /// The WebGPU device was lost: the resume banner offers WebGPU again or the CPU.
    lost: RwSignal<bool>,
    status: RwSignal<String>,
    error: RwSignal<Option<String>>,
    run: RwSignal<RunView>,
    prediction: RwSignal<Option<Prediction>>,
    exported: RwSignal<Option<(String, Vec<String>)>>,
    imported: RwSignal<Option<String>>,
    notice: RwSignal<Option<String>>,
    past: RwSignal<Vec<PastRun>>,
}

fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .unwrap_or(0.0)
}

fn task_of(card: &DatasetCard) -> TaskKind {
    match card.task.as_str() {
        "token-classification" => TaskKind::TokenClassification,
        "language-modeling" => TaskKind::MaskedLm,
        _ => TaskKind::Classification,
    }
}

fn kind_name(k: TaskKind) -> &'static str {
    match k {
        TaskKind::Classification => "classification",
        TaskKind::TokenClassification => "NER (token classification)",
        TaskKind::MaskedLm => "masked language modelling",
    }
}

async fn fetch_text(url: &str) -> Result<String, String> {
    let window = web_sys::window().ok_or("no window")?;
    let resp: web_sys::Response = JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(|e| format!("fetching {url}: {e:?}"))?
        .dyn_into()
        .map_err(|_| format!("fetching {url}: not a Response"))?;
    if !resp.ok() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let text = JsFuture::from(resp.text().map_err(|e| format!("{e:?}"))?)
        .await
        .map_err(|e| format!("{e:?}"))?;
    text.as_string().ok_or_else(|| format!("{url}: not text"))
}

async fn file_bytes(f: &File) -> Result<Vec<u8>, String> {
    let buf = JsFuture::from(f.array_buffer())
        .await
        .map_err(|e| format!("reading {}: {e:?}", f.name()))?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

fn files_of(list: Option<web_sys::FileList>) -> Vec<File> {
    let Some(list) = list else {
        return Vec::new();
    };
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

/// Parses a data text for the preview: examples, label counts, split sizes.
pub fn preview(
    title: &str,
    kind: TaskKind,
    train: DataFile,
    validation: Option<DataFile>,
    labels: Option<Vec<String>>,
    skip_bad: bool,
) -> Result<Dataset, String> {
    let opts = ParseOptions {
        skip_bad,
        ..Default::default()
    };
    let fmt = Format::from_path(&train.name).ok_or_else(|| {
        format!(
            "{}: unknown file type; use .jsonl, .csv, .conll or .txt",
            train.name
        )
    })?;
    let parsed = data::parse(&train.name, &train.text, fmt, &opts).map_err(|e| e.to_string())?;
    let mut skipped: Vec<String> = parsed.skipped.iter().map(|e| e.to_string()).collect();
    let n_all = parsed.examples.len();
    if n_all == 0 {
        return Err(format!("{}: no examples found", train.name));
    }
    let preview = parsed
        .examples
        .iter()
        .take(8)
        .map(|e| match e {
            Example::Text { line, text, label } => {
                (*line, text.clone(), label.clone().unwrap_or_default())
            }
            Example::Tagged { line, words, tags } => (
                *line,
                words.join(" "),
                words
                    .iter()
                    .zip(tags)
                    .filter(|(_, t)| t.as_str() != "O")
                    .map(|(w, t)| format!("{w}/{t}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        })
        .collect();
    let label_set = match (&labels, kind) {
        (_, TaskKind::MaskedLm) => Labels::default(),
        (Some(l), _) => Labels::new(l.clone()),
        (None, _) => Labels::infer(&parsed.examples),
    };
    if kind != TaskKind::MaskedLm && label_set.len() < 2 {
        return Err(format!(
            "{}: found {} label(s) {:?}; classification needs at least 2 (is the file a text corpus? then choose masked LM)",
            train.name,
            label_set.len(),
            label_set.names
        ));
    }
    let counts = label_set
        .counts(&parsed.examples)
        .into_iter()
        .collect::<Vec<_>>();
    let (n_train, n_validation) = match &validation {
        Some(v) => {
            let vf = Format::from_path(&v.name).unwrap_or(fmt);
            let p = data::parse(&v.name, &v.text, vf, &opts).map_err(|e| e.to_string())?;
            skipped.extend(p.skipped.iter().map(|e| e.to_string()));
            (n_all, p.examples.len())
        }
        None => {
            let (t, v) = holdout(parsed.examples, HOLDOUT);
            (t.len(), v.len())
        }
    };
    Ok(Dataset {
        title: title.to_string(),
        kind,
        train,
        validation,
        labels,
        preview,
        counts,
        n_train,
        n_validation,
        skipped,
    })
}

impl App {
    fn new() -> Self {
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
            exported: RwSignal::new(None),
            imported: RwSignal::new(None),
            notice: RwSignal::new(None),
            past: RwSignal::new(Vec::new()),
        }
    }

    fn on_event(self, e: Event, payload: Option<Vec<u8>>) {
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
    fn load_sample(self, id: String) {
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
    fn load_upload(self, kind: TaskKind) {
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

    fn start(self) {
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
        let config = match f.train_config(source.name(), d.kind) {
            Ok(c) => c,
            Err(e) => return self.error.set(Some(e)),
        };
        let spec = RunSpec {
            model: source,
            kind: d.kind,
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
            kind: Some(d.kind),
            ..RunView::default()
        });
        self.prediction.set(None);
        self.exported.set(None);
        bridge::send(&Request::Start {
            spec: Box::new(spec),
        });
    }
}

fn download(name: &str, bytes: &[u8]) {
    let arr = js_sys::Uint8Array::from(bytes);
    let parts = js_sys::Array::of1(&arr);
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type("application/zip");
    let Ok(blob) = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &opts) else {
        return;
    };
    let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob) else {
        return;
    };
    let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
        return;
    };
    if let Ok(a) = doc.create_element("a") {
        let a: web_sys::HtmlAnchorElement = a.unchecked_into();
        a.set_href(&url);
        a.set_download(name);
        a.click();
    }
}

fn fmt_count(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else if n >= 10_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    let app = App::new();
    if let Err(e) = bridge::start(move |e, p| app.on_event(e, p)) {
        app.error.set(Some(e));
    }
    // The manifest, then the default model and the form's dataset.
    spawn_local(async move {
        let m = match fetch_text("assets/manifest.json").await.and_then(|t| {
            Manifest::from_json("assets/manifest.json", &t).map_err(|e| e.to_string())
        }) {
            Ok(m) => m,
            Err(e) => return app.error.set(Some(e)),
        };
        if let Some(card) = m.model(&m.default_model).cloned() {
            let bytes = card.files.iter().map(|f| f.bytes).sum();
            if let Ok(cfg) = fetch_text(&format!("assets/{}/config.json", card.dir)).await {
                app.model_config
                    .set(ModelConfig::from_json("config.json", &cfg).ok());
            }
            app.model.set(Some(ModelChoice::Builtin {
                id: card.id.clone(),
                dir: card.dir.clone(),
                parameters: card.parameters,
                bytes,
                architecture: card.architecture.clone(),
            }));
        }
        app.manifest.set(Some(m));
        let data = app.form.get_untracked().data;
        if data != "upload" {
            app.load_sample(data);
        }
    });
    // The URL carries the configuration (not the data).
    Effect::new(move |_| {
        let q = app.form.with(Form::to_query);
        if let Some(w) = web_sys::window() {
            let url = if q.is_empty() {
                w.location().pathname().unwrap_or_default()
            } else {
                format!("?{q}")
            };
            if let Ok(h) = w.history() {
                let _ = h.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&url));
            }
        }
    });
    view! {
        <header class="top">
            <h1>"Tunelab"</h1>
            <p class="tagline">
                "Fine-tune real pretrained transformers in this tab, on your own GPU. Nothing leaves your device."
            </p>
        </header>
        <StatusBar app=app />
        <main>
            <ResumeBanner app=app />
            <ModelPanel app=app />
            <DataPanel app=app />
            <MethodPanel app=app />
            <PreflightPanel app=app />
            <TrainPanel app=app />
            <EvalPanel app=app />
            <PlaygroundPanel app=app />
            <ExportPanel app=app />
            <DevicePanel app=app />
            <StoragePanel app=app />
        </main>
    }
}

#[component]
fn StatusBar(app: App) -> impl IntoView {
    view! {
        <div class="statusbar">
            <span data-testid="status">{move || app.status.get()}</span>
            {move || app.error.get().map(|e| view! {
                <p class="error" data-testid="error" role="alert">{e}</p>
            })}
            {move || app.notice.get().map(|n| view! { <p class="ok" data-testid="notice">{n}</p> })}
        </div>
    }
}

#[component]
fn ResumeBanner(app: App) -> impl IntoView {
    view! {
        {move || app.saved.get().map(|s| {
            let kind = s.spec.kind;
            view! {
            <section class="panel banner" data-testid="resume-banner">
                <h2>{move || if app.lost.get() { "The GPU went away" } else { "An interrupted run" }}</h2>
                <p>{format!(
                    "{} on {} with {} was interrupted; its last checkpoint, at step {} of {}, is in this browser.",
                    s.spec.model.name(), s.spec.dataset, s.spec.config.method.name(), s.step, s.total
                )}</p>
                <button data-testid="resume" on:click=move |_| {
                    app.run.set(RunView { phase: Phase::Loading, kind: Some(kind), ..RunView::default() });
                    bridge::send(&Request::ResumeSaved { on_cpu: None });
                }>{move || if app.lost.get() { "Resume on WebGPU (a new device)" } else { "Resume from the checkpoint" }}</button>
                " "
                {move || app.lost.get().then(|| view! {
                    <button data-testid="resume-cpu" on:click=move |_| {
                        app.run.set(RunView { phase: Phase::Loading, kind: Some(kind), ..RunView::default() });
                        bridge::send(&Request::ResumeSaved { on_cpu: Some(true) });
                    }>"Resume on the CPU"</button>
                    " "
                })}
                <button class="secondary" on:click=move |_| bridge::send(&Request::Discard)>"Discard it"</button>
            </section>
            }
        })}
    }
}

#[component]
fn ModelPanel(app: App) -> impl IntoView {
    let pick = move |files: Vec<File>| {
        spawn_local(async move {
            let mut payload = Vec::new();
            for f in &files {
                let name = f.name();
                if ["config.json", "model.safetensors", "tokenizer.json"].contains(&name.as_str()) {
                    match file_bytes(f).await {
                        Ok(b) => payload.push((name, b)),
                        Err(e) => return app.error.set(Some(e)),
                    }
                }
            }
            if payload.len() < 3 {
                return app.error.set(Some(format!(
                    "a model needs config.json, model.safetensors and tokenizer.json; got {}",
                    files
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            app.error.set(None);
            app.status.set("Checking and storing your model…".into());
            bridge::send_with(
                &Request::SaveModel {
                    name: "my-model".into(),
                },
                payload,
            );
        });
    };
    view! {
        <section class="panel" data-testid="model-panel">
            <h2>"1. Model"</h2>
            {move || match app.model.get() {
                None => view! { <p class="muted">"Loading the model list…"</p> }.into_any(),
                Some(ModelChoice::Builtin { id, parameters, bytes, architecture, .. }) => {
                    let cfg = app.model_config.get();
                    view! {
                        <dl class="facts" data-testid="model-facts">
                            <dt>"Model"</dt><dd data-testid="model-name">{id}" (built in)"</dd>
                            <dt>"Architecture"</dt><dd>{architecture}{cfg.map(|c| c.dims()).map(|d| format!(", {} layers, hidden {}, {} heads", d.num_hidden_layers, d.hidden_size, d.num_attention_heads))}</dd>
                            <dt>"Parameters"</dt><dd data-testid="model-params">{fmt_count(parameters as usize)}</dd>
                            <dt>"Size"</dt><dd>{mib(bytes)}</dd>
                        </dl>
                    }.into_any()
                }
                Some(ModelChoice::User(f)) => view! {
                    <dl class="facts" data-testid="model-facts">
                        <dt>"Model"</dt><dd data-testid="model-name">{f.name.clone()}" (your files)"</dd>
                        <dt>"Architecture"</dt><dd>{format!("{}, {} layers, hidden {}, {} heads", f.architecture, f.layers, f.hidden, f.heads)}</dd>
                        <dt>"Parameters"</dt><dd data-testid="model-params">{fmt_count(f.parameters)}</dd>
                        <dt>"Size"</dt><dd>{mib(f.bytes)}</dd>
                    </dl>
                }.into_any(),
            }}
            <div class="dropzone"
                on:dragover=move |ev: DragEvent| ev.prevent_default()
                on:drop=move |ev: DragEvent| {
                    ev.prevent_default();
                    pick(files_of(ev.data_transfer().and_then(|d| d.files())));
                }>
                <label>"Or use your own Hugging Face model (config.json, model.safetensors, tokenizer.json): "
                    <input type="file" multiple data-testid="model-files"
                        on:change=move |ev| {
                            let input: HtmlInputElement = event_target(&ev);
                            pick(files_of(input.files()));
                        } />
                </label>
                <p class="muted">"…or drop the three files here."</p>
            </div>
        </section>
    }
}

#[component]
fn DataPanel(app: App) -> impl IntoView {
    let choose = move |id: String| {
        app.form.update(|f| f.data = id.clone());
        if id == "upload" {
            app.dataset.set(None);
            app.load_upload(TaskKind::Classification);
        } else {
            app.load_sample(id);
        }
    };
    let read_file = move |files: Vec<File>| {
        let Some(f) = files.into_iter().next() else {
            return;
        };
        spawn_local(async move {
            let text = match JsFuture::from(f.text()).await {
                Ok(t) => t.as_string().unwrap_or_default(),
                Err(e) => {
                    return app
                        .data_error
                        .set(Some(format!("reading {}: {e:?}", f.name())));
                }
            };
            let name = f.name();
            let kind = if name.ends_with(".conll") {
                TaskKind::TokenClassification
            } else if name.ends_with(".txt") {
                TaskKind::MaskedLm
            } else {
                TaskKind::Classification
            };
            app.form.update(|f| f.data = "upload".into());
            app.upload.set(Some((name, text)));
            app.load_upload(kind);
        });
    };
    view! {
        <section class="panel wide" data-testid="data-panel">
            <h2>"2. Data"</h2>
            <label>"Sample: "
                <select data-testid="dataset-select" on:change=move |ev| choose(event_target_value(&ev))
                    prop:value=move || app.form.get().data>
                    {move || app.manifest.get().map(|m| m.datasets.iter().map(|d| {
                        let id = d.id.clone();
                        let chosen = id.clone();
                        view! {
                            <option value=id selected=move || app.form.get().data == chosen>
                                {format!("{} — {}", d.title, d.task)}
                            </option>
                        }
                    }).collect_view())}
                    <option value="upload" selected=move || app.form.get().data == "upload">"Your file…"</option>
                </select>
            </label>
            <div class="dropzone"
                on:dragover=move |ev: DragEvent| ev.prevent_default()
                on:drop=move |ev: DragEvent| {
                    ev.prevent_default();
                    read_file(files_of(ev.data_transfer().and_then(|d| d.files())));
                }>
                <label>"Your data (CSV with text,label · JSONL · CoNLL · plain text): "
                    <input type="file" accept=".csv,.jsonl,.json,.conll,.txt" data-testid="data-file"
                        on:change=move |ev| {
                            let input: HtmlInputElement = event_target(&ev);
                            read_file(files_of(input.files()));
                        } />
                </label>
                <label class="inline">
                    <input type="checkbox" data-testid="skip-bad" prop:checked=move || app.form.get().skip_bad
                        on:change=move |ev| {
                            let on = event_target_checked(&ev);
                            app.form.update(|f| f.skip_bad = on);
                            let data = app.form.get_untracked().data;
                            if data == "upload" {
                                let kind = app.dataset.get_untracked().map(|d| d.kind).unwrap_or(TaskKind::Classification);
                                app.load_upload(kind);
                            } else {
                                app.load_sample(data);
                            }
                        } />
                    " Skip bad rows"
                </label>
            </div>
            {move || app.data_error.get().map(|e| view! { <p class="error" data-testid="data-error" role="alert">{e}</p> })}
            {move || app.dataset.get().map(|d| {
                let skipped = d.skipped.clone();
                view! {
                    <p data-testid="data-summary">
                        {format!("{}: {} · {} training and {} validation examples", d.title, kind_name(d.kind), d.n_train, d.n_validation)}
                    </p>
                    {(!skipped.is_empty()).then(|| view! {
                        <p class="warn" data-testid="skipped">{format!("Skipped {} bad row(s); the first: {}", skipped.len(), skipped[0])}</p>
                    })}
                    <table class="preview" data-testid="preview">
                        <thead><tr><th>"Line"</th><th>"Text"</th><th>{if d.kind == TaskKind::TokenClassification { "Entities" } else { "Label" }}</th></tr></thead>
                        <tbody>
                            {d.preview.iter().map(|(line, text, label)| view! {
                                <tr><td>{*line}</td><td class="text">{text.chars().take(160).collect::<String>()}</td><td>{label.clone()}</td></tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                    {(!d.counts.is_empty()).then(|| view! {
                        <p class="counts" data-testid="label-counts">
                            {d.counts.iter().map(|(l, n)| format!("{l}: {n}")).collect::<Vec<_>>().join(" · ")}
                        </p>
                    })}
                }
            })}
        </section>
    }
}

/// A text field bound to one form field by its query key. Text that does not parse leaves
/// the form unchanged, stays in the box, and shows what was expected under it.
fn num_input(
    app: App,
    label: &'static str,
    testid: &'static str,
    key: &'static str,
    get: impl Fn(&Form) -> String + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    view! {
        <label class="field">{label}
            <input data-testid=testid prop:value=move || app.form.with(get)
                class:invalid=move || error.with(Option::is_some)
                on:change=move |ev| {
                    let v = event_target_value(&ev);
                    let mut next = app.form.get_untracked();
                    match next.set(key, &v) {
                        Ok(()) => {
                            error.set(None);
                            app.form.set(next);
                        }
                        Err(e) => error.set(Some(e)),
                    }
                } />
            {move || error.get().map(|e| view! {
                <span class="field-error" data-testid=format!("{testid}-error")>{e}</span>
            })}
        </label>
    }
}

#[component]
fn MethodPanel(app: App) -> impl IntoView {
    let counts = Memo::new(move |_| {
        let cfg = app.model_config.get()?;
        let d = app.dataset.get()?;
        let f = app.form.get();
        Some(form::counts(&cfg, d.kind, d.counts.len(), &f.method()))
    });
    view! {
        <section class="panel" data-testid="method-panel">
            <h2>"3. Task and method"</h2>
            <div class="presets">
                {form::presets().into_iter().map(|(name, blurb, preset)| view! {
                    <button class="preset" title=blurb on:click=move |_| {
                        let data = preset.data.clone();
                        {
                            let now = app.form.get_untracked();
                            app.form.set(Form { cpu: now.cpu, gpu: now.gpu, ..preset.clone() });
                        }
                        app.load_sample(data);
                    }>{name}</button>
                }).collect_view()}
            </div>
            <p>"Task: " <strong data-testid="task">{move || app.dataset.get().map(|d| kind_name(d.kind)).unwrap_or("—")}</strong>
            {move || (app.form.get().data == "upload").then(|| view! {
                " "
                <select data-testid="task-select" on:change=move |ev| {
                    let k = match event_target_value(&ev).as_str() {
                        "ner" => TaskKind::TokenClassification,
                        "mlm" => TaskKind::MaskedLm,
                        _ => TaskKind::Classification,
                    };
                    app.load_upload(k);
                }>
                    <option value="cls">"classification"</option>
                    <option value="ner">"NER"</option>
                    <option value="mlm">"masked LM"</option>
                </select>
            })}
            </p>
            <div class="methods">
                {tunelab_core::peft::REGISTRY.iter().map(|i| (i.name, i.title, i.help)).map(|(id, name, help)| view! {
                    <label class="method">
                        <input type="radio" name="method" value=id data-testid=format!("method-{id}")
                            prop:checked=move || app.form.get().method == id
                            on:change=move |_| app.form.update(|f| f.method = id.to_string()) />
                        <strong>{name}</strong>
                        <span class="muted">" — "{help}</span>
                    </label>
                }).collect_view()}
            </div>
            {move || {
                let options = app.form.with(|f| f.method().options());
                (!options.is_empty()).then(|| view! {
                    <div class="options">
                        {options.iter().map(|o| num_input(app, o.label, o.flag, o.url, move |f: &Form| f.option(o))).collect_view()}
                    </div>
                })
            }}
            <div class="options">
                {num_input(app, "steps", "steps", "steps", |f| f.steps.to_string())}
                {num_input(app, "batch", "batch", "batch", |f| f.batch.to_string())}
                {num_input(app, "max tokens", "max-len", "len", |f| f.max_len.to_string())}
                {num_input(app, "learning rate (empty: method default)", "lr", "lr", |f| f.lr.clone())}
                {num_input(app, "evaluate every", "eval-every", "eval", |f| f.eval_every.to_string())}
                {num_input(app, "eval examples", "eval-examples", "evaln", |f| f.eval_examples.to_string())}
                {num_input(app, "checkpoint every", "save-every", "save", |f| f.save_every.to_string())}
            </div>
            <p data-testid="param-counts">{move || match counts.get() {
                None => "Trainable parameters: —".to_string(),
                Some(Ok((t, all))) => format!("Trainable parameters: {} of {} ({:.2}%)", fmt_count(t), fmt_count(all), 100.0 * t as f64 / all.max(1) as f64),
                Some(Err(e)) => format!("Cannot apply this method: {e}"),
            }}</p>
        </section>
    }
}

/// Memory budget assumed for a WebGPU device (browsers do not report device memory).
const GPU_BUDGET: u64 = 2 << 30;
/// The wasm CPU backend lives in 32-bit wasm memory.
const CPU_BUDGET: u64 = 3 << 30;

/// What the preflight found: the estimate against the budget, and whether the largest
/// tensor fits the device's buffer limit.
#[derive(Debug, Clone, PartialEq)]
struct Check {
    est: u64,
    budget: u64,
    largest: Result<(), String>,
    where_: &'static str,
    batch: usize,
}

impl Check {
    /// Why training cannot start here, when it cannot (the Train button then refuses).
    fn refusal(&self) -> Option<String> {
        self.largest
            .as_ref()
            .err()
            .map(|e| format!("cannot train here: {e}"))
    }
}

/// The preflight of the current choices (reactive: it reads the model, data and form).
fn preflight(app: App) -> Option<Check> {
    let cfg = app.model_config.get()?;
    let d = app.dataset.get()?;
    let f = app.form.get();
    let (t, all) = form::counts(&cfg, d.kind, d.counts.len(), &f.method()).ok()?;
    let prompt = f.method().virtual_tokens();
    let seq = f.max_len + prompt;
    let est = form::memory_estimate(&cfg, t, all, f.batch, seq);
    let backend = app.backend.get();
    let (budget, largest_ok, where_) = match &backend {
        Some(BackendInfo::WebGpu { adapter }) => (
            GPU_BUDGET,
            form::largest_tensor_fits(&cfg, d.kind, f.batch, seq, adapter.limits.max_buffer_size),
            "WebGPU",
        ),
        _ => (CPU_BUDGET, Ok(()), "the wasm CPU backend"),
    };
    Some(Check {
        est,
        budget,
        largest: largest_ok,
        where_,
        batch: f.batch,
    })
}

#[component]
fn PreflightPanel(app: App) -> impl IntoView {
    let check = Memo::new(move |_| preflight(app));
    view! {
        <section class="panel" data-testid="preflight-panel">
            <h2>"4. Preflight"</h2>
            {move || match check.get() {
                None => view! { <p class="muted">"Choose a model and data first."</p> }.into_any(),
                Some(Check { est, budget, largest, where_, batch }) => {
                    let fits = est <= budget;
                    view! {
                        <p data-testid="memory-estimate">{format!("Estimated memory: {} of the {} budget for {where_}.", mib(est), mib(budget))}</p>
                        {match largest {
                            Err(e) => view! { <p class="error" data-testid="preflight-refused">{format!("Cannot train here: {e}.")}</p> }.into_any(),
                            Ok(()) if !fits && batch > 1 => view! {
                                <p class="warn" data-testid="preflight-adjust">{format!("Batch {batch} may not fit.")}
                                    " "<button on:click=move |_| app.form.update(|f| f.batch = (f.batch / 2).max(1))>"Halve the batch"</button>
                                </p>
                            }.into_any(),
                            Ok(()) if !fits => view! {
                                <p class="warn" data-testid="preflight-adjust">"It may not fit even at batch 1: shorten the texts (max tokens) or pick a smaller model."</p>
                            }.into_any(),
                            Ok(()) => view! { <p class="ok" data-testid="preflight-ok">"Fits."</p> }.into_any(),
                        }}
                    }.into_any()
                }
            }}
            {move || match app.backend.get() {
                Some(BackendInfo::Cpu { reason, threads, .. }) => Some(view! {
                    <p class="warn" data-testid="cpu-fallback">{format!("Training on the wasm CPU backend ({}): {reason}.", if threads == 1 { "1 thread".to_string() } else { format!("{threads} threads") })}</p>
                }),
                _ => None,
            }}
            <label class="inline">
                <input type="checkbox" data-testid="force-cpu" prop:checked=move || app.form.get().cpu
                    on:change=move |ev| { let on = event_target_checked(&ev); app.form.update(|f| f.cpu = on); } />
                " Train on the CPU (wasm) instead of WebGPU"
            </label>
            <label class="inline">
                <input type="checkbox" data-testid="force-gpu" prop:checked=move || app.form.get().gpu
                    on:change=move |ev| { let on = event_target_checked(&ev); app.form.update(|f| f.gpu = on); } />
                " Use WebGPU even when the browser only has a software adapter (reload to apply)"
            </label>
        </section>
    }
}

fn rate(steps: &[StepPoint]) -> Option<(f64, f64, f64)> {
    let tail: Vec<&StepPoint> = steps.iter().rev().take(10).collect();
    if tail.is_empty() {
        return None;
    }
    let ms: f64 = tail.iter().map(|p| p.ms).sum::<f64>() / tail.len() as f64;
    let tokens: f64 = tail.iter().map(|p| p.report.tokens as f64).sum::<f64>() / tail.len() as f64;
    Some((ms, 1000.0 / ms.max(1e-9), tokens * 1000.0 / ms.max(1e-9)))
}

fn main_metric(kind: Option<TaskKind>) -> (&'static str, &'static str) {
    match kind {
        Some(TaskKind::TokenClassification) => ("f1", "entity F1"),
        Some(TaskKind::MaskedLm) => ("perplexity", "perplexity"),
        _ => ("accuracy", "accuracy"),
    }
}

#[component]
fn TrainPanel(app: App) -> impl IntoView {
    let loss = Signal::derive(move || {
        let r = app.run.get();
        let train: Vec<(f64, f64)> = r
            .history
            .steps
            .iter()
            .map(|p| (p.report.step as f64, f64::from(p.report.loss)))
            .collect();
        let eval: Vec<(f64, f64)> = r
            .history
            .evals
            .iter()
            .filter_map(|(s, e)| e.metrics.get("loss").map(|l| (*s as f64, *l)))
            .collect();
        vec![
            ("training loss".to_string(), "a", train),
            ("validation loss".to_string(), "b", eval),
        ]
    });
    let lr = Signal::derive(move || {
        let r = app.run.get();
        vec![(
            "learning rate".to_string(),
            "c",
            r.history
                .steps
                .iter()
                .map(|p| (p.report.step as f64, p.report.lr))
                .collect(),
        )]
    });
    let metric = Signal::derive(move || {
        let r = app.run.get();
        let (key, name) = main_metric(r.kind);
        vec![(
            name.to_string(),
            "b",
            r.history
                .evals
                .iter()
                .filter_map(|(s, e)| e.metrics.get(key).map(|v| (*s as f64, *v)))
                .collect(),
        )]
    });
    let refusal = Memo::new(move |_| preflight(app).and_then(|c| c.refusal()));
    view! {
        <section class="panel wide" data-testid="train-panel">
            <h2>"5. Train"</h2>
            <div class="controls">
                <button data-testid="train" on:click=move |_| app.start()
                    title=move || refusal.get().unwrap_or_default()
                    disabled=move || matches!(app.run.get().phase, Phase::Loading | Phase::Training | Phase::Paused)
                        || refusal.with(Option::is_some)>"Train"</button>
                {move || match app.run.get().phase {
                    Phase::Training => view! {
                        <button data-testid="pause" on:click=move |_| bridge::send(&Request::Pause)>"Pause"</button>
                        <button data-testid="stop" on:click=move |_| bridge::send(&Request::Stop)>"Stop"</button>
                    }.into_any(),
                    Phase::Paused => view! {
                        <button data-testid="continue" on:click=move |_| bridge::send(&Request::Continue)>"Resume"</button>
                        <button data-testid="stop" on:click=move |_| bridge::send(&Request::Stop)>"Stop"</button>
                    }.into_any(),
                    _ => ().into_any(),
                }}
            </div>
            {move || {
                let r = app.run.get();
                let last = r.history.steps.last().map(|p| p.report);
                let step = last.map(|l| l.step).unwrap_or(0);
                let phase = format!("{:?}", r.phase).to_lowercase();
                let backend = r.backend.as_ref().map_or_else(|| "—".into(), BackendInfo::label);
                let speed = rate(&r.history.steps);
                view! {
                    <div class="progress"><div class="bar" style=format!("width: {:.1}%", 100.0 * step as f64 / r.total.max(1) as f64)></div></div>
                    <dl class="facts run">
                        <dt>"State"</dt><dd data-testid="phase">{phase}</dd>
                        <dt>"Step"</dt><dd data-testid="step">{format!("{step} / {}", r.total)}</dd>
                        <dt>"Backend"</dt><dd data-testid="run-backend">{backend}</dd>
                        <dt>"Trainable"</dt><dd data-testid="run-trainable">{format!("{} of {}", fmt_count(r.trainable), fmt_count(r.parameters))}</dd>
                        <dt>"Examples"</dt><dd>{format!("{} train, {} validation", r.train_examples, r.validation_examples)}</dd>
                        <dt>"Loss"</dt><dd data-testid="loss">{last.map(|l| format!("{:.4}", l.loss)).unwrap_or_default()}</dd>
                        <dt>"Speed"</dt><dd data-testid="speed">{speed.map(|(ms, sps, tps)| format!("{sps:.2} steps/s · {tps:.0} tokens/s · {ms:.0} ms/step")).unwrap_or_default()}</dd>
                        <dt>"Step time"</dt><dd data-testid="step-ms">{speed.map(|s| format!("{:.1}", s.0)).unwrap_or_default()}</dd>
                        <dt>"First step after"</dt><dd data-testid="first-step-ms">{r.first_step_ms.map(|t| format!("{:.0}", t)).unwrap_or_default()}</dd>
                        <dt>"Model from"</dt><dd data-testid="model-cached">{if r.phase == Phase::Idle { String::new() } else if r.cached { "browser storage".into() } else { "the network".into() }}</dd>
                        <dt>"Checkpoint"</dt><dd data-testid="checkpoint">{r.last_checkpoint.map(|s| format!("step {s}")).unwrap_or_default()}</dd>
                        <dt>"Resumed at"</dt><dd data-testid="resumed-at">{r.resumed_at.map(|s| s.to_string()).unwrap_or_default()}</dd>
                    </dl>
                }
            }}
            <div class="charts">
                <LineChart title="Loss" y_label="loss" testid="loss-chart" series=loss />
                <LineChart title="Evaluation" y_label="metric" testid="metric-chart" series=metric />
                <LineChart title="Learning rate" y_label="lr" testid="lr-chart" series=lr />
            </div>
            <pre class="hidden" data-testid="losses">{move || app.run.get().history.steps.iter().map(|p| format!("{} {} {:.1} {}", p.report.step, p.report.loss, p.ms, p.report.tokens)).collect::<Vec<_>>().join("\n")}</pre>
        </section>
    }
}

fn confusion_view(c: &Confusion) -> impl IntoView {
    view! {
        <table class="confusion" data-testid="confusion">
            <thead><tr><th>"gold \\ predicted"</th>{c.labels.iter().map(|l| view! { <th>{l.clone()}</th> }).collect_view()}</tr></thead>
            <tbody>
                {c.labels.iter().zip(&c.counts).map(|(l, row)| view! {
                    <tr><th>{l.clone()}</th>{row.iter().map(|n| view! { <td>{*n}</td> }).collect_view()}</tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}

fn report_view(r: &EvalReport) -> impl IntoView {
    let metrics = r
        .metrics
        .iter()
        .map(|(k, v)| {
            view! { <tr><th>{k.clone()}</th><td data-testid=format!("metric-{k}")>{format!("{v:.4}")}</td></tr> }
        })
        .collect_view();
    let per = |title: &'static str,
               testid: &'static str,
               m: &std::collections::BTreeMap<String, tunelab_core::metrics::Prf>| {
        (!m.is_empty()).then(|| {
            view! {
                <table data-testid=testid>
                    <thead><tr><th>{title}</th><th>"precision"</th><th>"recall"</th><th>"F1"</th><th>"support"</th></tr></thead>
                    <tbody>
                        {m.iter().map(|(k, p)| view! {
                            <tr><th>{k.clone()}</th><td>{format!("{:.3}", p.precision)}</td><td>{format!("{:.3}", p.recall)}</td><td>{format!("{:.3}", p.f1)}</td><td>{p.support}</td></tr>
                        }).collect_view()}
                    </tbody>
                </table>
            }
        })
    };
    view! {
        <p>{format!("{} validation examples", r.examples)}</p>
        <table class="metrics" data-testid="metrics"><tbody>{metrics}</tbody></table>
        {per("class", "per-class", &r.per_class)}
        {r.confusion.as_ref().map(confusion_view)}
        {per("entity type", "per-entity", &r.per_entity)}
    }
}

#[component]
fn EvalPanel(app: App) -> impl IntoView {
    view! {
        <section class="panel" data-testid="eval-panel">
            <h2>"6. Evaluate"</h2>
            {move || match app.run.get().history.evals.last() {
                None => view! { <p class="muted">"Evaluation runs every few steps and at the end."</p> }.into_any(),
                Some((step, r)) => view! {
                    <p data-testid="eval-step">{format!("At step {step}")}</p>
                    {report_view(r)}
                }.into_any(),
            }}
        </section>
    }
}

#[component]
fn PlaygroundPanel(app: App) -> impl IntoView {
    let text = RwSignal::new(String::from("What a wonderful, heartfelt film."));
    let ready = move || {
        matches!(
            app.run.get().phase,
            Phase::Paused | Phase::Finished | Phase::Stopped
        )
    };
    view! {
        <section class="panel" data-testid="playground-panel">
            <h2>"7. Try it"</h2>
            <textarea data-testid="playground-text" rows="3" prop:value=move || text.get()
                on:input=move |ev| text.set(event_target_value(&ev))></textarea>
            <button data-testid="predict" disabled=move || !ready()
                on:click=move |_| bridge::send(&Request::Predict { text: text.get_untracked() })>"Run the model"</button>
            {move || (!ready()).then(|| view! { <p class="muted">"Train (or pause), or import an adapter, to try the model."</p> })}
            {move || app.prediction.get().map(|p| match p {
                Prediction::Class { label, score, scores, .. } => view! {
                    <p data-testid="prediction"><strong>{label}</strong>{format!(" ({:.1}%)", 100.0 * score)}</p>
                    <ul class="scores">{scores.into_iter().map(|(l, s)| view! {
                        <li><span class="barlabel">{l}</span><span class="scorebar" style=format!("width: {:.0}px", 200.0 * s)></span>{format!(" {:.1}%", 100.0 * s)}</li>
                    }).collect_view()}</ul>
                }.into_any(),
                Prediction::Tags { tags } => view! {
                    <p data-testid="prediction">{tags.into_iter().map(|(w, t)| {
                        let class = if t == "O" { "tok".to_string() } else { format!("tok ent {}", t.trim_start_matches(['B', 'I', '-'])) };
                        view! { <span class=class title=t.clone()>{w}{(t != "O").then(|| view! { <sub>{t.clone()}</sub> })}</span>" " }
                    }).collect_view()}</p>
                }.into_any(),
                Prediction::Masks { fills } => view! {
                    <div data-testid="prediction">
                        {if fills.is_empty() { view! { <p class="muted">"Put [MASK] in the text to see the model's guesses."</p> }.into_any() } else { ().into_any() }}
                        {fills.into_iter().enumerate().map(|(i, f)| view! {
                            <p>{format!("mask {}: ", i + 1)}{f.into_iter().map(|(t, p)| format!("{t} ({:.1}%)", 100.0 * p)).collect::<Vec<_>>().join(", ")}</p>
                        }).collect_view()}
                    </div>
                }.into_any(),
            })}
        </section>
    }
}

#[component]
fn ExportPanel(app: App) -> impl IntoView {
    let ready = move || {
        matches!(
            app.run.get().phase,
            Phase::Paused | Phase::Finished | Phase::Stopped
        )
    };
    view! {
        <section class="panel" data-testid="export-panel">
            <h2>"8. Export"</h2>
            <p class="muted">"Adapters download in Hugging Face PEFT format (adapter_config.json + adapter_model.safetensors): load them with PeftModel.from_pretrained."</p>
            <button data-testid="export" disabled=move || !ready() on:click=move |_| bridge::send(&Request::Export)>"Download"</button>
            {move || app.exported.get().map(|(name, files)| view! {
                <p data-testid="exported">{format!("{name}: {}", files.join(", "))}</p>
            })}
            <label>"Import an exported adapter (.zip): "
                <input type="file" accept=".zip" data-testid="import-file" on:change=move |ev| {
                    let input: HtmlInputElement = event_target(&ev);
                    let Some(f) = files_of(input.files()).into_iter().next() else { return };
                    let Some(model) = app.model.get_untracked() else { return };
                    spawn_local(async move {
                        match file_bytes(&f).await {
                            Ok(b) => bridge::send_with(&Request::Import { model: model.source() }, vec![(f.name(), b)]),
                            Err(e) => app.error.set(Some(e)),
                        }
                    });
                } />
            </label>
            {move || app.imported.get().map(|m| view! { <p class="ok" data-testid="imported">{m}</p> })}
        </section>
    }
}

#[component]
fn DevicePanel(app: App) -> impl IntoView {
    view! {
        <section class="panel" data-testid="gpu-panel">
            <h2>"Compute device"</h2>
            {move || {
                let (r, note) = match app.backend.get() {
                    None => return view! { <p class="muted" data-testid="gpu-status">"Asking the browser for a WebGPU adapter…"</p> }.into_any(),
                    Some(BackendInfo::Cpu { reason, adapter: None, .. }) => return view! {
                        <p class="warn" data-testid="gpu-status">"Training on the wasm CPU backend: " {reason}</p>
                    }.into_any(),
                    Some(BackendInfo::Cpu { reason, adapter: Some(a), .. }) => (a, Some(reason)),
                    Some(BackendInfo::WebGpu { adapter }) => (adapter, None),
                };
                let l = r.limits.clone();
                let rows = vec![
                    ("Max storage buffer binding", mib(l.max_storage_buffer_binding_size), "limit-max-storage-buffer-binding-size"),
                    ("Max buffer size", mib(l.max_buffer_size), "limit-max-buffer-size"),
                    ("Workgroup storage", format!("{} bytes", l.max_compute_workgroup_storage_size), "limit-max-compute-workgroup-storage-size"),
                    ("Invocations per workgroup", l.max_compute_invocations_per_workgroup.to_string(), "limit-max-compute-invocations-per-workgroup"),
                    ("Workgroups per dimension", l.max_compute_workgroups_per_dimension.to_string(), "limit-max-compute-workgroups-per-dimension"),
                    ("Storage buffers per stage", l.max_storage_buffers_per_shader_stage.to_string(), "limit-max-storage-buffers-per-shader-stage"),
                ];
                let has = |f: &str| if r.features.iter().any(|x| x == f) { "yes" } else { "no" };
                let features = format!("shader-f16: {}, subgroups: {}, timestamp queries: {}", has("SHADER_F16"), has("SUBGROUP"), has("TIMESTAMP_QUERY"));
                view! {
                    <p class="ok" data-testid="gpu-status">"WebGPU ready"</p>
                    {note.map(|n| view! { <p class="warn" data-testid="gpu-note">{format!("Training uses the wasm CPU backend: {n}.")}</p> })}
                    <dl class="facts">
                        <dt>"Adapter"</dt><dd data-testid="adapter-name">{r.name.clone()}</dd>
                        <dt>"Vendor"</dt><dd data-testid="adapter-vendor">{r.vendor.clone()}</dd>
                        <dt>"Architecture"</dt><dd data-testid="adapter-architecture">{r.architecture.clone()}</dd>
                        <dt>"Backend"</dt><dd data-testid="adapter-backend">{r.backend.clone()}</dd>
                        <dt>"Device type"</dt><dd data-testid="adapter-device-type">{r.device_type.clone()}</dd>
                        <dt>"Features"</dt><dd data-testid="adapter-features">{features}</dd>
                    </dl>
                    <table class="limits" data-testid="adapter-limits">
                        <tbody>
                            {rows.into_iter().map(|(label, value, id)| view! {
                                <tr><th>{label}</th><td data-testid=id>{value}</td></tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any()
            }}
        </section>
    }
}

#[component]
fn StoragePanel(app: App) -> impl IntoView {
    view! {
        <section class="panel" data-testid="storage-panel">
            <h2>"Your data"</h2>
            <p class="muted">"Models, datasets, checkpoints and the run's history stay in this browser's storage. Share the configuration (never the data) with this page's address."</p>
            <p><input readonly class="share" data-testid="share-url"
                prop:value=move || { app.form.get(); web_sys::window().and_then(|w| w.location().href().ok()).unwrap_or_default() } /></p>
            {move || app.manifest.get().map(|m| view! {
                <details>
                    <summary>"Built-in model and samples"</summary>
                    <ul class="models">
                        {m.models.iter().map(|model| view! {
                            <li data-testid="model">
                                <strong>{model.id.clone()}</strong>
                                {format!(" — {} · {:.1}M parameters · {}", model.architecture, model.parameters as f64 / 1e6, model.license)}
                            </li>
                        }).collect_view()}
                    </ul>
                    <table class="datasets">
                        <thead><tr><th>"Dataset"</th><th>"Task"</th><th>"Labels"</th><th>"Train / validation / test"</th><th>"Licence"</th></tr></thead>
                        <tbody>
                            {m.datasets.iter().map(|d| {
                                let size = |k: &str| d.split_sizes.get(k).copied().unwrap_or(0);
                                view! {
                                    <tr data-testid="dataset">
                                        <td>{d.title.clone()}</td>
                                        <td>{d.task.clone()}</td>
                                        <td>{d.labels.len()}</td>
                                        <td>{format!("{} / {} / {}", size("train"), size("validation"), size("test"))}</td>
                                        <td>{d.license.clone()}</td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                </details>
            })}
            {move || {
                let past = app.past.get();
                (!past.is_empty()).then(|| view! {
                    <table class="past" data-testid="past-runs">
                        <thead><tr><th>"Run"</th><th>"Method"</th><th>"Steps"</th><th>"Backend"</th><th>"Result"</th></tr></thead>
                        <tbody>
                            {past.into_iter().rev().map(|r| {
                                let result = ["accuracy", "f1", "perplexity"].iter()
                                    .find_map(|k| r.metrics.get(*k).map(|v| format!("{k} {v:.3}")))
                                    .unwrap_or_default();
                                view! {
                                    <tr>
                                        <td>{format!("{} · {}", r.dataset, r.model)}</td>
                                        <td>{r.method.clone()}</td>
                                        <td>{format!("{}{}", r.steps, if r.stopped { " (stopped)" } else { "" })}</td>
                                        <td>{r.backend.clone()}</td>
                                        <td>{result}</td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                })
            }}
            <button class="danger" data-testid="delete-data" on:click=move |_| bridge::send(&Request::DeleteAll)>"Delete my data"</button>
        </section>
    }
}
