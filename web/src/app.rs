//! The page: model → data → task and method → preflight → train → evaluate → try it →
//! export, with the run persisted by the worker and the options in the URL.

use crate::bridge;
use crate::form::Form;
use crate::panels::{
    data::DataPanel,
    device::DevicePanel,
    eval::EvalPanel,
    export::ExportPanel,
    method::MethodPanel,
    model::ModelPanel,
    playground::PlaygroundPanel,
    preflight::PreflightPanel,
    status::{ResumeBanner, StatusBar},
    storage::StoragePanel,
    train::TrainPanel,
};
use leptos::prelude::*;
use leptos::task::spawn_local;
use tunelab_core::data::{self, Example, Format, Labels, ParseOptions};
use tunelab_core::generate::Stop;
use tunelab_core::models::ModelConfig;
use tunelab_core::models::heads::Task;
use tunelab_core::predict::Prediction;
use tunelab_core::session::holdout;
use tunelab_core::trainer::TaskKind;
use tunelab_core::{DatasetCard, Manifest};
use tunelab_web::protocol::{
    BackendInfo, DataFile, History, ModelFacts, ModelSource, PastRun, SavedRun,
};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::File;

/// Held-out share of an uploaded training file when there is no validation file.
pub(crate) const HOLDOUT: f64 = 0.1;

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
    pub(crate) fn source(&self) -> ModelSource {
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
pub(crate) struct App {
    pub(crate) form: RwSignal<Form>,
    pub(crate) manifest: RwSignal<Option<Manifest>>,
    pub(crate) model: RwSignal<Option<ModelChoice>>,
    pub(crate) model_config: RwSignal<Option<ModelConfig>>,
    pub(crate) dataset: RwSignal<Option<Dataset>>,
    pub(crate) data_error: RwSignal<Option<String>>,
    pub(crate) upload: RwSignal<Option<(String, String)>>,
    pub(crate) backend: RwSignal<Option<BackendInfo>>,
    pub(crate) saved: RwSignal<Option<SavedRun>>,
    /// The WebGPU device was lost: the resume banner offers WebGPU again or the CPU.
    pub(crate) lost: RwSignal<bool>,
    pub(crate) status: RwSignal<String>,
    pub(crate) error: RwSignal<Option<String>>,
    pub(crate) run: RwSignal<RunView>,
    pub(crate) prediction: RwSignal<Option<Prediction>>,
    /// Text generated so far (causal LM), and whether a generation is running.
    pub(crate) generated: RwSignal<String>,
    pub(crate) generating: RwSignal<bool>,
    /// How the last generation ended: why, how many tokens, tokens per second.
    pub(crate) generation_done: RwSignal<Option<(Stop, usize, f64)>>,
    pub(crate) exported: RwSignal<Option<(String, Vec<String>)>>,
    pub(crate) imported: RwSignal<Option<String>>,
    pub(crate) notice: RwSignal<Option<String>>,
    pub(crate) past: RwSignal<Vec<PastRun>>,
}

pub(crate) fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .unwrap_or(0.0)
}

pub(crate) fn task_of(card: &DatasetCard) -> TaskKind {
    match card.task.as_str() {
        "token-classification" => TaskKind::TokenClassification,
        "language-modeling" => TaskKind::MaskedLm,
        _ => TaskKind::Classification,
    }
}

/// The task a dataset's kind becomes on `model`: a plain-text corpus is masked-LM
/// pretraining for an encoder and causal LM for a decoder (which has no masked-LM head).
pub(crate) fn effective_kind(kind: TaskKind, model: Option<&ModelConfig>) -> TaskKind {
    match (kind, model) {
        (TaskKind::MaskedLm, Some(c)) if c.supports(Task::MaskedLm).is_err() => TaskKind::CausalLm,
        (k, _) => k,
    }
}

pub(crate) fn kind_name(k: TaskKind) -> &'static str {
    match k {
        TaskKind::Classification => "classification",
        TaskKind::TokenClassification => "NER (token classification)",
        TaskKind::MaskedLm => "masked language modelling",
        TaskKind::CausalLm => "causal language modelling",
    }
}

pub(crate) async fn fetch_text(url: &str) -> Result<String, String> {
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

pub(crate) async fn file_bytes(f: &File) -> Result<Vec<u8>, String> {
    let buf = JsFuture::from(f.array_buffer())
        .await
        .map_err(|e| format!("reading {}: {e:?}", f.name()))?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

pub(crate) fn files_of(list: Option<web_sys::FileList>) -> Vec<File> {
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

pub(crate) fn download(name: &str, bytes: &[u8]) {
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

pub(crate) fn fmt_count(n: usize) -> String {
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
