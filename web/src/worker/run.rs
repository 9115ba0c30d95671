//! The worker's requests: backend choice, model files (fetched once, then from browser
//! storage), the training loop with checkpoints, prediction, export and import.

use crate::{Control, Engine, Payload, post, state, status};
use js_sys::{Promise, Reflect};
use std::sync::Arc;
use tunelab_candle::Candle;
use tunelab_core::backend::Backend;
use tunelab_core::data::Labels;
use tunelab_core::export::{self, ExportInfo};
use tunelab_core::models::ModelConfig;
use tunelab_core::models::task_model::TaskModel;
use tunelab_core::params::ParamStore;
use tunelab_core::peft::Method;
use tunelab_core::session::{self, DataText, ModelFiles, Session};
use tunelab_core::tokenizer::Tokenizer;
use tunelab_core::trainer::{StepReport, TaskKind, TrainError, Trainer};
use tunelab_web::protocol::{
    BackendInfo, Event, History, ModelFacts, ModelSource, PastRun, RunSpec, SavedRun, StepPoint,
};
use tunelab_web::{storage, zipfile};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use tunelab_web::saved::{self, SPEC};
const PAST: &str = "runs/history.json";
/// Runs kept in the history.
const PAST_MAX: usize = 50;

/// A trained or imported model, ready for the playground and export.
pub(crate) struct Model<B: Backend> {
    pub backend: B,
    pub model: TaskModel<B>,
    pub store: ParamStore<B>,
    pub tokenizer: Tokenizer,
    pub kind: TaskKind,
    pub labels: Labels,
    pub max_len: usize,
    pub method: Method,
    pub base_model: String,
    pub base_config_json: String,
}

/// A session (training, or trained) or an imported model, on either backend.
pub(crate) enum Slot<B: Backend> {
    Training(Box<Session<B>>, Box<RunSpec>, String),
    Imported(Box<Model<B>>),
}

pub(crate) enum Live {
    Gpu(Slot<tunelab_wgpu::Wgpu>),
    Cpu(Slot<Candle>),
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Resolves after `ms` (0: lets queued messages run first).
pub(crate) async fn sleep(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        let g = js_sys::global();
        if let Ok(f) = Reflect::get(&g, &"setTimeout".into()) {
            let f: js_sys::Function = f.unchecked_into();
            let _ = f.call2(&g, &resolve, &JsValue::from(ms));
        }
    });
    let _ = JsFuture::from(p).await;
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The backend: WebGPU, unless the browser has no adapter, the adapter is a software
/// renderer (SwiftShader, WARP, lavapipe: the wasm CPU backend is much faster; `force_gpu`
/// overrides), or the page asked for the CPU. The WebGPU device is created once and kept.
// In wasm wgpu's types are not Send: the worker's one thread owns the device (Wgpu takes an Arc).
#[allow(clippy::arc_with_non_send_sync)]
async fn engine(force_cpu: bool, force_gpu: bool) -> (Engine, BackendInfo) {
    let st = state();
    // A device lost since it was made cannot be used again: ask for a new one.
    let cached = st
        .gpu
        .borrow()
        .clone()
        .filter(|g| !matches!(g, Ok((w, _)) if w.context().lost().is_some()));
    let gpu = match cached {
        Some(g) => g,
        None => {
            let g = match tunelab_wgpu::Context::new(Default::default()).await {
                Ok(ctx) => {
                    let adapter = ctx.report().clone();
                    Ok((tunelab_wgpu::Wgpu::new(Arc::new(ctx)), adapter))
                }
                Err(e) => Err(match e.to_string() {
                    m if m.contains("no GPU adapter") => {
                        "this browser offers no WebGPU adapter".to_string()
                    }
                    m => m,
                }),
            };
            *st.gpu.borrow_mut() = Some(g.clone());
            g
        }
    };
    let cpu = |reason: String, adapter: Option<tunelab_wgpu::AdapterReport>| {
        (
            Engine::Cpu(Candle::cpu()),
            BackendInfo::Cpu {
                reason,
                adapter,
                threads: crate::cpu_threads(),
            },
        )
    };
    match gpu {
        Err(reason) => cpu(reason, None),
        Ok((_, adapter)) if force_cpu => cpu(
            "the CPU backend was chosen for this run".into(),
            Some(adapter),
        ),
        Ok((_, adapter)) if adapter.device_type == "Cpu" && !force_gpu => cpu(
            format!(
                "the browser's WebGPU adapter ({}) is a software renderer, slower than the CPU backend",
                if adapter.architecture.is_empty() {
                    adapter.vendor.clone()
                } else {
                    adapter.architecture.clone()
                }
            ),
            Some(adapter),
        ),
        Ok((be, adapter)) => (Engine::Gpu(be), BackendInfo::WebGpu { adapter }),
    }
}

/// `url` (relative to the app's root) made absolute. A relative URL in a worker resolves
/// against the worker's script; the threaded worker's is in `threads/`, so its loader names
/// the app's root in `self.tunelabRoot`.
fn app_url(url: &str) -> String {
    Reflect::get(&js_sys::global(), &"tunelabRoot".into())
        .ok()
        .and_then(|root| root.as_string())
        .and_then(|root| web_sys::Url::new_with_base(url, &root).ok())
        .map_or_else(|| url.to_string(), |u| u.href())
}

async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
    let g = js_sys::global();
    let url = &app_url(url);
    let f: js_sys::Function = Reflect::get(&g, &"fetch".into())
        .map_err(|_| "no fetch in this worker".to_string())?
        .unchecked_into();
    let p: Promise = f
        .call1(&g, &JsValue::from_str(url))
        .map_err(|e| format!("fetching {url}: {e:?}"))?
        .unchecked_into();
    let resp: web_sys::Response = JsFuture::from(p)
        .await
        .map_err(|e| format!("fetching {url}: {e:?}"))?
        .unchecked_into();
    if !resp.ok() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let buf = JsFuture::from(resp.array_buffer().map_err(|e| format!("{e:?}"))?)
        .await
        .map_err(|e| format!("{url}: {e:?}"))?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

const MODEL_FILES: [&str; 3] = ["model.safetensors", "tokenizer.json", "config.json"];

/// The model's files from browser storage, or (built-in models) fetched and stored there.
/// Returns whether they came from storage.
async fn model_files(source: &ModelSource) -> Result<(ModelFiles, bool), String> {
    let dir = format!("models/{}", source.name());
    let mut got = Vec::new();
    for f in MODEL_FILES {
        got.push(storage::read(&format!("{dir}/{f}")).await.map_err(s)?);
    }
    let cached = got.iter().all(Option::is_some);
    if !cached {
        let ModelSource::Builtin { dir: url_dir, .. } = source else {
            return Err(format!(
                "the model `{}` is no longer in browser storage; add its files again",
                source.name()
            ));
        };
        got.clear();
        for f in MODEL_FILES {
            status(format!("Downloading {f} of {}…", source.name()));
            let bytes = fetch_bytes(&format!("assets/{url_dir}/{f}")).await?;
            // config.json is written last: its presence marks a complete copy.
            storage::write(&format!("{dir}/{f}"), &bytes)
                .await
                .map_err(s)?;
            got.push(Some(bytes));
        }
    }
    let mut it = got.into_iter().map(Option::unwrap_or_default);
    let (weights, tokenizer_json, config) = (
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
    );
    Ok((
        ModelFiles {
            name: source.name().to_string(),
            config_json: String::from_utf8_lossy(&config).into_owned(),
            weights,
            tokenizer_json,
        },
        cached,
    ))
}

pub(crate) async fn handle(
    req: tunelab_web::protocol::Request,
    files: Payload,
) -> Result<(), String> {
    use tunelab_web::protocol::Request as R;
    match req {
        R::Hello {
            force_cpu,
            force_gpu,
        } => hello(force_cpu, force_gpu).await,
        R::SaveModel { name } => save_model(&name, files).await,
        R::Start { spec } => start(*spec, None).await,
        R::ResumeSaved { on_cpu } => resume_saved(on_cpu).await,
        R::Predict { text } => predict(text).await,
        R::Export => export_zip().await,
        R::Import { model } => import(model, files).await,
        R::Discard => {
            ensure_idle()?;
            storage::remove(saved::DIR).await.map_err(s)?;
            post(&Event::Discarded, None);
            Ok(())
        }
        R::DeleteAll => {
            ensure_idle()?;
            storage::remove_all().await.map_err(s)?;
            *state().live.borrow_mut() = None;
            post(&Event::Deleted, None);
            Ok(())
        }
        R::Pause | R::Continue | R::Stop | R::LoseDevice => Ok(()),
    }
}

fn ensure_idle() -> Result<(), String> {
    if state().training.get() {
        return Err("a run is training: stop it first".into());
    }
    Ok(())
}

async fn saved_run() -> Option<SavedRun> {
    saved::load(&storage::Opfs).await
}

async fn past_runs() -> Vec<PastRun> {
    storage::read_text(PAST)
        .await
        .ok()
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

async fn record_run(r: &PastRun) -> Result<(), String> {
    let mut past = past_runs().await;
    past.push(r.clone());
    let drop_n = past.len().saturating_sub(PAST_MAX);
    past.drain(..drop_n);
    storage::write(PAST, serde_json::to_string(&past).map_err(s)?.as_bytes())
        .await
        .map_err(s)
}

async fn hello(force_cpu: bool, force_gpu: bool) -> Result<(), String> {
    let (_, backend) = engine(force_cpu, force_gpu).await;
    let saved = saved_run().await.filter(|r| !r.finished).map(Box::new);
    let cached = storage::list("models").await.unwrap_or_default();
    post(
        &Event::Ready {
            backend,
            saved,
            cached,
            past: past_runs().await,
        },
        None,
    );
    Ok(())
}

async fn save_model(name: &str, files: Payload) -> Result<(), String> {
    ensure_idle()?;
    let get = |f: &str| {
        files
            .get(f)
            .cloned()
            .ok_or_else(|| format!("the model needs {f}; it was not among the files given"))
    };
    let m = ModelFiles {
        name: name.to_string(),
        config_json: String::from_utf8(get("config.json")?)
            .map_err(|_| "config.json is not UTF-8 text".to_string())?,
        weights: get("model.safetensors")?,
        tokenizer_json: get("tokenizer.json")?,
    };
    let (config, _) = m.parts().map_err(s)?;
    let (tensors, _) =
        tunelab_core::safetensors_io::read("model.safetensors", &m.weights).map_err(s)?;
    let parameters = tensors.values().map(|t| t.shape.numel()).sum();
    // The same checks a run makes: every tensor the architecture needs, none extra.
    let mut store = ParamStore::new();
    TaskModel::load(
        &Candle::cpu(),
        name,
        &m.config_json,
        tensors,
        tunelab_core::models::heads::Task::MaskedLm,
        &Method::Full(Default::default()),
        0,
        &mut store,
    )
    .map_err(s)?;
    drop(store);
    let dir = format!("models/{name}");
    for (f, bytes) in [
        ("model.safetensors", &m.weights),
        ("tokenizer.json", &m.tokenizer_json),
        ("config.json", &m.config_json.as_bytes().to_vec()),
    ] {
        storage::write(&format!("{dir}/{f}"), bytes)
            .await
            .map_err(s)?;
    }
    post(
        &Event::ModelSaved {
            facts: facts(name, &config, &m, parameters),
        },
        None,
    );
    Ok(())
}

/// The model's facts; `parameters` counts the checkpoint's tensors.
fn facts(name: &str, c: &ModelConfig, m: &ModelFiles, parameters: usize) -> ModelFacts {
    let d = c.dims();
    ModelFacts {
        name: name.to_string(),
        architecture: c.model_type().to_string(),
        layers: d.num_hidden_layers,
        hidden: d.hidden_size,
        heads: d.num_attention_heads,
        vocab: d.vocab_size,
        parameters,
        bytes: m.weights.len() as u64,
        config_json: m.config_json.clone(),
    }
}

fn text(d: &tunelab_web::protocol::DataFile) -> DataText {
    DataText {
        name: d.name.clone(),
        text: d.text.clone(),
    }
}

/// Builds the session for `spec` on `be`.
fn build<B: Backend>(be: B, spec: &RunSpec, m: &ModelFiles) -> Result<Session<B>, String> {
    session::prepare(
        be,
        &spec.config,
        spec.kind,
        m,
        &text(&spec.train),
        spec.validation.as_ref().map(text).as_ref(),
        spec.labels.clone(),
        spec.holdout,
    )
    .map_err(s)
}

async fn start(spec: RunSpec, checkpoint: Option<(Vec<u8>, History)>) -> Result<(), String> {
    ensure_idle()?;
    let st = state();
    st.training.set(true);
    st.control.set(Control::Run);
    let result = start_inner(spec, checkpoint).await;
    st.training.set(false);
    let lost = match &result {
        Err(_) => wait_for_loss().await,
        Ok(()) => None,
    };
    match (result, lost) {
        // Whatever failed, a lost device is the cause: the session on it is dead, and the run
        // can go on from its last checkpoint on a new device or on the CPU.
        (Err(_), Some(why)) => {
            *st.live.borrow_mut() = None;
            *st.gpu.borrow_mut() = None;
            let saved = saved_run().await.filter(|r| !r.finished).map(Box::new);
            post(
                &Event::DeviceLost {
                    message: format!(
                        "The WebGPU device was lost ({why}); training stopped. The last checkpoint is in this browser: resume it on a new WebGPU device or on the CPU."
                    ),
                    saved,
                },
                None,
            );
            Ok(())
        }
        (result, _) => result,
    }
}

async fn start_inner(spec: RunSpec, checkpoint: Option<(Vec<u8>, History)>) -> Result<(), String> {
    let (engine, info) = engine(spec.force_cpu, spec.force_gpu).await;
    state().on_gpu.set(matches!(engine, Engine::Gpu(_)));
    status(format!("Loading {}…", spec.model.name()));
    let (files, cached) = model_files(&spec.model).await?;
    let config_json = files.config_json.clone();
    status("Tokenising the data and building the model…");
    if checkpoint.is_none() {
        // A new run replaces the saved one.
        storage::remove(saved::DIR).await.map_err(s)?;
        storage::write(SPEC, serde_json::to_string(&spec).map_err(s)?.as_bytes())
            .await
            .map_err(s)?;
    }
    match engine {
        Engine::Gpu(be) => {
            let sess = build(be, &spec, &files)?;
            drop(files);
            train(sess, spec, config_json, info, cached, checkpoint).await
        }
        Engine::Cpu(be) => {
            let sess = build(be, &spec, &files)?;
            drop(files);
            train(sess, spec, config_json, info, cached, checkpoint).await
        }
    }
}

/// Destroys the worker's WebGPU device (the page's test hook; see `Request::LoseDevice`).
pub(crate) fn lose_device() {
    if let Some(Ok((gpu, _))) = state().gpu.borrow().as_ref() {
        gpu.context().destroy_device();
    }
}

/// Why the worker's WebGPU device was lost, if it was.
fn device_lost() -> Option<String> {
    match state().gpu.borrow().as_ref() {
        Some(Ok((gpu, _))) => gpu.context().lost(),
        _ => None,
    }
}

/// After a failed run on WebGPU: whether the device was lost. The browser says so through a
/// promise that can settle after the failed operation's own (a readback's mapping fails
/// first), so this waits for it up to two seconds.
async fn wait_for_loss() -> Option<String> {
    if !state().on_gpu.get() {
        return None;
    }
    for _ in 0..20 {
        if let Some(why) = device_lost() {
            return Some(why);
        }
        sleep(100).await;
    }
    None
}

async fn resume_saved(on_cpu: Option<bool>) -> Result<(), String> {
    let mut saved = saved_run()
        .await
        .ok_or("there is no interrupted run in browser storage")?;
    if let Some(cpu) = on_cpu {
        saved.spec.force_cpu = cpu;
    }
    let bytes = saved::checkpoint(&storage::Opfs, &saved)
        .await?
        .ok_or("the interrupted run has no checkpoint yet; start it again")?;
    start(saved.spec, Some((bytes, saved.history))).await
}

async fn save<B: Backend>(
    sess: &Session<B>,
    spec: &RunSpec,
    history: &History,
    finished: bool,
) -> Result<(), String> {
    let t = &sess.trainer;
    let bytes = if finished {
        None
    } else {
        Some(t.checkpoint().await.map_err(s)?)
    };
    let run = SavedRun {
        spec: RunSpec {
            // The spec (with the data) is stored once, in spec.json.
            train: tunelab_web::protocol::DataFile {
                name: spec.train.name.clone(),
                text: String::new(),
            },
            validation: None,
            // Field by field: `..spec.clone()` would copy the data texts at every checkpoint.
            model: spec.model.clone(),
            kind: spec.kind,
            dataset: spec.dataset.clone(),
            labels: spec.labels.clone(),
            holdout: spec.holdout,
            config: spec.config.clone(),
            force_cpu: spec.force_cpu,
            force_gpu: spec.force_gpu,
        },
        step: t.state.step,
        total: t.total_steps(),
        finished,
        history: history.clone(),
        checkpoint: None,
    };
    saved::save(&storage::Opfs, run, bytes.as_deref()).await
}

#[allow(clippy::too_many_arguments)]
async fn train<B: Held>(
    mut sess: Session<B>,
    spec: RunSpec,
    config_json: String,
    backend: BackendInfo,
    cached: bool,
    checkpoint: Option<(Vec<u8>, History)>,
) -> Result<(), String> {
    let st = state();
    let mut history = History::default();
    let resumed = match checkpoint {
        Some((bytes, mut h)) => {
            sess.trainer
                .restore("checkpoint.safetensors", &bytes)
                .map_err(s)?;
            h.truncate(sess.trainer.state.step);
            history = h.clone();
            Some(h)
        }
        None => None,
    };
    let (trainable, parameters) = sess.trainer.store.counts(&sess.trainer.backend);
    post(
        &Event::Started {
            backend: backend.clone(),
            total_steps: sess.trainer.total_steps(),
            trainable,
            parameters,
            train_examples: sess.trainer.train_features().len(),
            validation_examples: sess.validation.as_ref().map_or(0, |v| v.len()),
            labels: sess.trainer.labels.names.clone(),
            skipped: sess.skipped,
            cached,
            resumed,
        },
        None,
    );
    let mut stopped = false;
    let mut failure = None;
    while !sess.trainer.is_done() {
        match st.control.get() {
            Control::Stop => {
                stopped = true;
                break;
            }
            Control::Pause => {
                let step = sess.trainer.state.step;
                // While paused the model serves the playground and export.
                *st.live.borrow_mut() = Some(B::wrap(Slot::Training(
                    Box::new(sess),
                    Box::new(spec.clone()),
                    config_json.clone(),
                )));
                post(&Event::Paused { step }, None);
                while st.control.get() == Control::Pause {
                    sleep(100).await;
                }
                sess = loop {
                    if let Some(s2) = take_session::<B>() {
                        break s2;
                    }
                    sleep(50).await;
                };
                if st.control.get() == Control::Run {
                    post(&Event::Continued, None);
                }
                continue;
            }
            Control::Run => {}
        }
        let t0 = now_ms();
        let report = match B::train_step(&mut sess.trainer).await {
            Ok(r) => r,
            Err(e) => {
                failure = Some(format!(
                    "{e}. The last checkpoint in browser storage is intact; lower the learning rate and start again."
                ));
                break;
            }
        };
        let point = StepPoint {
            report,
            ms: now_ms() - t0,
        };
        history.steps.push(point.clone());
        post(&Event::Step { point }, None);
        if sess.trainer.should_eval(&report)
            && let Some(val) = &sess.validation
        {
            status("Evaluating…");
            let r = sess.trainer.evaluate(val).await.map_err(s)?;
            sess.trainer.record_eval(&r);
            history.evals.push((report.step, r.clone()));
            post(
                &Event::Eval {
                    step: report.step,
                    report: Box::new(r),
                },
                None,
            );
        }
        if sess.trainer.should_save(&report) && !sess.trainer.is_done() {
            save(&sess, &spec, &history, false).await?;
            post(&Event::Checkpoint { step: report.step }, None);
        }
        // Lets Pause / Stop in (a CPU step never yields on its own).
        sleep(0).await;
    }
    let step = sess.trainer.state.step;
    let done = sess.trainer.is_done();
    if done {
        save(&sess, &spec, &history, true).await?;
    }
    let record = PastRun {
        model: spec.model.name().to_string(),
        dataset: spec.dataset.clone(),
        method: spec.config.method.name().to_string(),
        steps: step,
        stopped,
        backend: backend.label(),
        metrics: history
            .evals
            .last()
            .map(|(_, r)| r.metrics.clone())
            .unwrap_or_default(),
    };
    *st.live.borrow_mut() = Some(B::wrap(Slot::Training(
        Box::new(sess),
        Box::new(spec),
        config_json,
    )));
    if let Some(f) = failure {
        return Err(f);
    }
    record_run(&record).await?;
    post(
        &Event::Finished {
            stopped,
            step,
            record: Box::new(record),
        },
        None,
    );
    Ok(())
}

/// Backends the worker holds: how a slot on each is wrapped and unwrapped, and how a training
/// step runs on it.
pub(crate) trait Held: Backend + 'static {
    fn wrap(slot: Slot<Self>) -> Live;
    fn unwrap(live: Live) -> Result<Slot<Self>, Live>;
    /// One training step (on this worker's thread unless the backend says otherwise).
    async fn train_step(trainer: &mut Trainer<Self>) -> Result<StepReport, TrainError> {
        trainer.train_step().await
    }
}

impl Held for tunelab_wgpu::Wgpu {
    fn wrap(slot: Slot<Self>) -> Live {
        Live::Gpu(slot)
    }
    fn unwrap(live: Live) -> Result<Slot<Self>, Live> {
        match live {
            Live::Gpu(s) => Ok(s),
            other => Err(other),
        }
    }
}

impl Held for Candle {
    fn wrap(slot: Slot<Self>) -> Live {
        Live::Cpu(slot)
    }
    fn unwrap(live: Live) -> Result<Slot<Self>, Live> {
        match live {
            Live::Cpu(s) => Ok(s),
            other => Err(other),
        }
    }
    /// In the threaded build the step runs on a thread of rayon's pool, as the CLI runs its
    /// command: from this worker, every parallel op of the step (a few thousand) would wake
    /// the pool and put this worker to sleep until it finished, one thread more than cores.
    /// The CPU backend's futures are ready when first polled (its downloads are synchronous),
    /// so the step is polled once there.
    #[cfg(target_feature = "atomics")]
    async fn train_step(trainer: &mut Trainer<Self>) -> Result<StepReport, TrainError> {
        let step = trainer.state.step + 1;
        rayon::scope(|_| {
            let mut fut = std::pin::pin!(trainer.train_step());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match fut.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => Err(TrainError::Backend(
                    tunelab_core::backend::BackendError::Device {
                        backend: "candle",
                        msg: format!("step {step} waited on the CPU backend, which never waits"),
                    },
                )),
            }
        })
    }
}

/// Takes the paused session back (`None` while the playground or export borrows it).
fn take_session<B: Held>() -> Option<Session<B>> {
    let st = state();
    let live = st.live.borrow_mut().take()?;
    match B::unwrap(live) {
        Ok(Slot::Training(sess, _, _)) => Some(*sess),
        Ok(other) => {
            *st.live.borrow_mut() = Some(B::wrap(other));
            None
        }
        Err(other) => {
            *st.live.borrow_mut() = Some(other);
            None
        }
    }
}

/// Runs `f` on the live model (taken out of the slot while it runs).
async fn with_live<F, T>(f: F) -> Result<T, String>
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
trait AsyncLiveFn<T> {
    async fn call<B: Backend>(&self, slot: &Slot<B>) -> Result<T, String>;
}

/// The model view of a slot.
struct View<'a, B: Backend> {
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

fn view<B: Backend>(slot: &Slot<B>) -> View<'_, B> {
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

struct PredictFn(String);
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

async fn predict(text: String) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("type some text to try the model on".into());
    }
    let prediction = with_live(PredictFn(text.clone())).await?;
    post(&Event::Prediction { text, prediction }, None);
    Ok(())
}

struct ExportFn;
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
        let files = export::export(v.backend, v.model, v.store, v.method, &info)
            .await
            .map_err(s)?;
        let task = match v.kind {
            TaskKind::Classification => "classification",
            TaskKind::TokenClassification => "ner",
            TaskKind::MaskedLm => "mlm",
        };
        Ok((
            format!("tunelab-{}-{}-{task}.zip", v.base_model, v.method.name()),
            files,
        ))
    }
}

async fn export_zip() -> Result<(), String> {
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

async fn import(model: ModelSource, files: Payload) -> Result<(), String> {
    ensure_idle()?;
    let (zip_name, zip) = files
        .into_iter()
        .next()
        .ok_or("choose the exported zip to import")?;
    let files = zipfile::unpack(&zip_name, &zip)?;
    let imported = export::import(&files).map_err(|e| format!("{zip_name}: {e}"))?;
    let m = imported.manifest;
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
            be,
            &base,
            &m,
            &imported.tensors,
            &zip_name,
        )?))),
        Engine::Cpu(be) => Live::Cpu(Slot::Imported(Box::new(load_adapter(
            be,
            &base,
            &m,
            &imported.tensors,
            &zip_name,
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

fn load_adapter<B: Backend>(
    be: B,
    base: &ModelFiles,
    m: &export::ExportManifest,
    tensors: &std::collections::BTreeMap<String, tunelab_core::safetensors_io::HostTensor>,
    file: &str,
) -> Result<Model<B>, String> {
    let (_, tokenizer) = base.parts().map_err(s)?;
    let (weights, _) = tunelab_core::safetensors_io::read(&base.name, &base.weights).map_err(s)?;
    let mut store = ParamStore::new();
    let model = TaskModel::load(
        &be,
        &base.name,
        &base.config_json,
        weights,
        session::head_task(m.task, &m.labels),
        &m.method,
        0,
        &mut store,
    )
    .map_err(s)?;
    export::apply(&be, &mut store, tensors, file).map_err(s)?;
    Ok(Model {
        backend: be,
        model,
        store,
        tokenizer,
        kind: m.task,
        labels: m.labels.clone(),
        max_len: m.max_len,
        method: m.method.clone(),
        base_model: m.base_model.clone(),
        base_config_json: base.config_json.clone(),
    })
}
