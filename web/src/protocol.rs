//! Messages between the page and the training worker. Each message is one JSON text (serde)
//! plus, for files, binary payloads posted next to it (never copied into the JSON).

use serde::{Deserialize, Serialize};
use tunelab_core::generate::{GenerateConfig, Generation};
use tunelab_core::predict::Prediction;
use tunelab_core::trainer::{EvalReport, StepReport, TaskKind, TrainConfig};
use tunelab_wgpu::AdapterReport;

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum ModelSource {
    /// A model of the served assets (fetched once, then read from browser storage).
    Builtin { id: String, dir: String },
    /// The user's own files, kept in browser storage under this name.
    User { name: String },
}

impl ModelSource {
    pub fn name(&self) -> &str {
        match self {
            Self::Builtin { id, .. } => id,
            Self::User { name } => name,
        }
    }
}

/// One data file as the page read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFile {
    pub name: String,
    pub text: String,
}

/// Everything a run needs; saved with its checkpoints so a reload can resume it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub model: ModelSource,
    pub kind: TaskKind,
    /// The dataset's title (`Sentiment`, or the file name).
    pub dataset: String,
    pub train: DataFile,
    pub validation: Option<DataFile>,
    /// Label order (the dataset card's, or inferred when absent).
    pub labels: Option<Vec<String>>,
    /// Fraction of the training file held out for validation when there is no validation file.
    pub holdout: f64,
    pub config: TrainConfig,
    /// Train on the wasm CPU backend even when WebGPU is there.
    pub force_cpu: bool,
    /// Train on WebGPU even when the adapter is a software renderer (slower than the CPU).
    #[serde(default)]
    pub force_gpu: bool,
}

/// The compute backend a run uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendInfo {
    WebGpu {
        adapter: AdapterReport,
    },
    /// The wasm CPU backend (candle), with the reason WebGPU is not used and the adapter, if
    /// there is one.
    Cpu {
        reason: String,
        adapter: Option<AdapterReport>,
        /// Threads the CPU kernels run on: the threaded worker's pool of Web Workers, or 1.
        #[serde(default = "one")]
        threads: usize,
    },
}

fn one() -> usize {
    1
}

impl BackendInfo {
    /// A short name for the backend: "WebGPU (architecture)" or "wasm CPU, N threads".
    pub fn label(&self) -> String {
        match self {
            BackendInfo::WebGpu { adapter } if adapter.architecture.is_empty() => {
                format!("WebGPU ({})", adapter.vendor)
            }
            BackendInfo::WebGpu { adapter } => format!("WebGPU ({})", adapter.architecture),
            BackendInfo::Cpu { threads: 1, .. } => "wasm CPU, 1 thread".into(),
            BackendInfo::Cpu { threads, .. } => format!("wasm CPU, {threads} threads"),
        }
    }
}

/// A step as charted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepPoint {
    pub report: StepReport,
    /// Wall time of the step in the worker.
    pub ms: f64,
}

/// What the charts show, saved with the checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub steps: Vec<StepPoint>,
    pub evals: Vec<(u64, EvalReport)>,
}

impl History {
    /// Drops points after `step` (a checkpoint older than the history).
    pub fn truncate(&mut self, step: u64) {
        self.steps.retain(|p| p.report.step <= step);
        self.evals.retain(|(s, _)| *s <= step);
    }
}

/// A run's state in browser storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRun {
    pub spec: RunSpec,
    pub step: u64,
    pub total: u64,
    pub finished: bool,
    pub history: History,
    /// The checkpoint file (in the run's folder) that `step` and `history` belong to; `None`
    /// in states saved before checkpoints were named by step.
    #[serde(default)]
    pub checkpoint: Option<String>,
}

/// A finished (or stopped) run, kept in the browser's run history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PastRun {
    pub model: String,
    pub dataset: String,
    pub method: String,
    pub steps: u64,
    pub stopped: bool,
    pub backend: String,
    /// The last evaluation's metrics.
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// Page → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// First message: which backend, and whether an interrupted run is saved.
    Hello {
        force_cpu: bool,
        force_gpu: bool,
    },
    /// Store the user's model files (posted as payloads `config.json`, `model.safetensors`,
    /// `tokenizer.json`) under `name`.
    SaveModel {
        name: String,
    },
    Start {
        spec: Box<RunSpec>,
    },
    /// Continue the run saved in browser storage from its last checkpoint; `on_cpu` picks
    /// the backend (`None`: the run's own choice).
    ResumeSaved {
        #[serde(default)]
        on_cpu: Option<bool>,
    },
    /// Destroys the WebGPU device now, as a browser does when it reclaims one: for tests of
    /// what a run does then (the page offers it as `window.tunelabTest.loseDevice()`).
    LoseDevice,
    Pause,
    Continue,
    Stop,
    Predict {
        text: String,
    },
    /// Continue `prompt` with the causal LM in use; the text comes as `Generated` events.
    Generate {
        prompt: String,
        config: GenerateConfig,
    },
    /// End the generation in progress before its next token.
    StopGenerating,
    /// Download the trained weights (PEFT format for adapters) as a zip.
    Export,
    /// Load an exported adapter (zip payload) onto a model.
    Import {
        model: ModelSource,
    },
    /// Forget the saved run.
    Discard,
    /// Delete every model, dataset, checkpoint and run kept by the app.
    DeleteAll,
}

/// The model's facts, shown before training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFacts {
    pub name: String,
    pub architecture: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub vocab: usize,
    pub parameters: usize,
    pub bytes: u64,
    /// `config.json`, for counting parameters as options change.
    pub config_json: String,
}

/// Worker → page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Ready {
        backend: BackendInfo,
        saved: Option<Box<SavedRun>>,
        /// Models already in browser storage.
        cached: Vec<String>,
        /// Earlier runs, oldest first.
        past: Vec<PastRun>,
    },
    /// Progress of a long operation (downloading, loading, tokenising).
    Status {
        message: String,
    },
    ModelSaved {
        facts: ModelFacts,
    },
    Started {
        backend: BackendInfo,
        total_steps: u64,
        trainable: usize,
        parameters: usize,
        train_examples: usize,
        validation_examples: usize,
        labels: Vec<String>,
        skipped: usize,
        /// The model came from browser storage (not the network).
        cached: bool,
        /// Resumed from a checkpoint: the history so far.
        resumed: Option<History>,
    },
    Step {
        point: StepPoint,
    },
    Eval {
        step: u64,
        report: Box<EvalReport>,
    },
    Checkpoint {
        step: u64,
    },
    Paused {
        step: u64,
    },
    Continued,
    Finished {
        stopped: bool,
        step: u64,
        record: Box<PastRun>,
    },
    Prediction {
        text: String,
        prediction: Prediction,
    },
    /// A piece of generated text, as soon as it decodes to whole characters.
    Generated {
        piece: String,
    },
    /// The generation ended.
    GenerationDone {
        generation: Generation,
        tokens_per_s: f64,
    },
    /// The zip follows as the payload.
    Exported {
        file_name: String,
        files: Vec<String>,
    },
    Imported {
        method: String,
        task: TaskKind,
        labels: Vec<String>,
    },
    Discarded,
    Deleted,
    /// The WebGPU device was lost while the worker used it: the run stopped and `saved` (its
    /// last checkpoint in browser storage) can be resumed on a new device or on the CPU.
    DeviceLost {
        message: String,
        saved: Option<Box<SavedRun>>,
    },
    Error {
        message: String,
    },
}
