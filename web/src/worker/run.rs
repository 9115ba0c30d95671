//! The worker's requests and the training loop with its checkpoints; the backend choice is
//! in `engine.rs`, model files and history in `files.rs`, prediction, export and import in
//! `live.rs`.

use crate::{Control, Engine, Payload, post, state, status};
use js_sys::{Promise, Reflect};
use tunelab_candle::Candle;
use tunelab_core::backend::Backend;
use tunelab_core::data::Labels;
use tunelab_core::models::task_model::TaskModel;
use tunelab_core::params::ParamStore;
use tunelab_core::peft::Method;
use tunelab_core::session::{self, DataText, ModelFiles, RunInputs, Session};
use tunelab_core::tokenizer::Tokenizer;
use tunelab_core::trainer::{StepReport, TaskKind, TrainError, Trainer};
use tunelab_web::protocol::{BackendInfo, Event, History, PastRun, RunSpec, SavedRun, StepPoint};
use tunelab_web::storage;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::{engine::*, files::*, live::*};
use tunelab_web::saved::{self, SPEC};

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

pub(crate) fn now_ms() -> f64 {
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

pub(crate) fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
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
        R::Generate { prompt, config } => generate(prompt, config).await,
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
        R::Pause | R::Continue | R::Stop | R::LoseDevice | R::StopGenerating => Ok(()),
    }
}

pub(crate) fn ensure_idle() -> Result<(), String> {
    if state().training.get() {
        return Err("a run is training: stop it first".into());
    }
    Ok(())
}

pub(crate) async fn hello(force_cpu: bool, force_gpu: bool) -> Result<(), String> {
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

pub(crate) fn text(d: &tunelab_web::protocol::DataFile) -> DataText {
    DataText {
        name: d.name.clone(),
        text: d.text.clone(),
    }
}

/// Builds the session for `spec` on `be`.
pub(crate) fn build<B: Backend>(
    be: B,
    spec: &RunSpec,
    m: &ModelFiles,
) -> Result<Session<B>, String> {
    let (train, validation) = (text(&spec.train), spec.validation.as_ref().map(text));
    let inputs = RunInputs {
        validation: validation.as_ref(),
        labels: spec.labels.as_deref(),
        holdout_fraction: spec.holdout,
        ..RunInputs::new(m, &train)
    };
    session::prepare(be, &spec.config, inputs).map_err(s)
}

pub(crate) async fn start(
    spec: RunSpec,
    checkpoint: Option<(Vec<u8>, History)>,
) -> Result<(), String> {
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

pub(crate) async fn start_inner(
    spec: RunSpec,
    checkpoint: Option<(Vec<u8>, History)>,
) -> Result<(), String> {
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

pub(crate) async fn resume_saved(on_cpu: Option<bool>) -> Result<(), String> {
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

pub(crate) async fn save<B: Backend>(
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
pub(crate) async fn train<B: Held>(
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
pub(crate) fn take_session<B: Held>() -> Option<Session<B>> {
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
