//! The whole engine on WebGPU against the candle backend: a tiny BERT (and RoBERTa and GPT-2) with
//! every registered method (full fine-tuning, BitFit, LoRA, prompt tuning, IA3) — logits, every trainable gradient and
//! ten training steps — and a long loop whose GPU memory must not grow.
//!
//! Runs natively on whatever adapter is present (lavapipe without a GPU); skipped without
//! one unless `TUNELAB_REQUIRE_ADAPTER` is set.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

mod bindings;

use std::path::PathBuf;
use std::sync::Arc;
use tunelab_candle::Candle;
use tunelab_core::Shape;
use tunelab_core::backend::{Backend, IGNORE_INDEX};
use tunelab_core::models::heads::Task;
use tunelab_core::models::task_model::TaskModel;
use tunelab_core::optim::{AdamWConfig, Optimizer, Schedule};
use tunelab_core::params::ParamStore;
use tunelab_core::peft::{Method, REGISTRY, lora::LoraConfig};
use tunelab_core::safetensors_io::read;
use tunelab_core::trainer::step as train;
use tunelab_wgpu::{Context, Wgpu};

fn wgpu() -> Option<Wgpu> {
    match pollster::block_on(Context::new(Default::default())) {
        Ok(ctx) => Some(Wgpu::new(Arc::new(ctx))),
        Err(e) if std::env::var_os("TUNELAB_REQUIRE_ADAPTER").is_none() => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => panic!("TUNELAB_REQUIRE_ADAPTER is set but: {e}"),
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Every registered method with its defaults; prompt tuning with 3 virtual tokens, which
/// fit the tiny model's 24 positions.
fn methods() -> Vec<Method> {
    REGISTRY
        .iter()
        .map(|i| {
            let mut m = Method::named(i.name).unwrap();
            if let Method::Prompt(p) = &mut m {
                p.num_virtual_tokens = 3;
            }
            m
        })
        .collect()
}

fn build<B: Backend>(
    be: &B,
    arch: &str,
    task: Task,
    method: &Method,
) -> (TaskModel<B>, ParamStore<B>) {
    let dir = fixture(&format!("tiny-{arch}"));
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let (tensors, _) = read(
        "model.safetensors",
        &std::fs::read(dir.join("model.safetensors")).unwrap(),
    )
    .unwrap();
    let mut store = ParamStore::new();
    let model = TaskModel::load(be, arch, &config, tensors, task, method, 3, &mut store).unwrap();
    (model, store)
}

/// A padded batch: 3 rows of lengths 9, 5, 1 (ids 5..61).
fn batch() -> (Vec<u32>, Vec<f32>, usize, usize) {
    let (b, t) = (3, 9);
    let lens = [9, 5, 1];
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for (r, &l) in lens.iter().enumerate() {
        for i in 0..t {
            ids.push(if i < l {
                5 + ((r * 13 + i * 7) % 56) as u32
            } else {
                0
            });
            mask.push(if i < l { 1.0 } else { 0.0 });
        }
    }
    (ids, mask, b, t)
}

fn labels(task: Task, b: usize, t: usize) -> (Vec<u32>, Shape) {
    match task {
        Task::SequenceClassification { .. } => {
            ((0..b as u32).map(|i| i % 3).collect(), Shape::new([b]))
        }
        _ => (
            (0..b * t)
                .map(|i| {
                    if i % 4 == 3 {
                        IGNORE_INDEX
                    } else {
                        (i % 3) as u32
                    }
                })
                .collect(),
            Shape::new([b * t]),
        ),
    }
}

/// The labels as the model's logits read them (causal LM shifts them:
/// [`TaskModel::targets`]).
fn targets<B: Backend>(
    be: &B,
    model: &TaskModel<B>,
    store: &ParamStore<B>,
    lab: Vec<u32>,
    sh: Shape,
    b: usize,
    t: usize,
) -> (Vec<u32>, Shape) {
    if sh.rank() == 1 && sh.dims()[0] == b {
        return (lab, sh);
    }
    let (lab, _) = model.targets(be, store, &lab, b, t);
    let n = lab.len();
    (lab, Shape::new([n]))
}

/// Logits and every trainable gradient, named.
fn forward_backward<B: Backend>(
    be: &B,
    model: &TaskModel<B>,
    store: &ParamStore<B>,
    task: Task,
) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    forward_backward_on(be, model, store, task, batch())
}

/// [`forward_backward`] on a given batch `(ids, mask, b, t)`.
fn forward_backward_on<B: Backend>(
    be: &B,
    model: &TaskModel<B>,
    store: &ParamStore<B>,
    task: Task,
    (ids, mask, b, t): (Vec<u32>, Vec<f32>, usize, usize),
) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let input = model.input(be, store, &ids, &mask, b, t).unwrap();
    let (lab, sh) = labels(task, b, t);
    let (lab, sh) = targets(be, model, store, lab, sh, b, t);
    let lab = be.upload_u32(&lab, &sh).unwrap();
    let f = model
        .forward(be, store, &input, Some((&lab, 0.25)), true)
        .unwrap();
    let (mut tape, bound, logits, loss) = (f.tape, f.bound, f.logits, f.loss.unwrap());
    let lv = pollster::block_on(be.download(tape.value(logits).unwrap())).unwrap();
    tape.backward(loss).unwrap();
    let grads = store
        .grads(&mut tape, &bound)
        .into_iter()
        .map(|(id, g)| {
            (
                store.get(id).name.clone(),
                pollster::block_on(be.download(&g.unwrap())).unwrap(),
            )
        })
        .collect();
    (lv, grads)
}

fn losses<B: Backend>(be: &B, arch: &str, task: Task, method: &Method, steps: usize) -> Vec<f32> {
    let (model, store) = build(be, arch, task, method);
    train_losses(be, model, store, task, steps)
}

fn train_losses<B: Backend>(
    be: &B,
    model: TaskModel<B>,
    store: ParamStore<B>,
    task: Task,
    steps: usize,
) -> Vec<f32> {
    train_losses_on(be, model, store, task, steps, batch())
}

/// [`train_losses`] on a given batch.
fn train_losses_on<B: Backend>(
    be: &B,
    model: TaskModel<B>,
    mut store: ParamStore<B>,
    task: Task,
    steps: usize,
    (ids, mask, b, t): (Vec<u32>, Vec<f32>, usize, usize),
) -> Vec<f32> {
    let mut opt = Optimizer::<B>::new(
        AdamWConfig {
            lr: 5e-3,
            ..Default::default()
        },
        Schedule::Linear {
            warmup: 2,
            total: steps as u32,
        },
    );
    let (lab, sh) = labels(task, b, t);
    let (lab, sh) = targets(be, &model, &store, lab, sh, b, t);
    (0..steps)
        .map(|_| {
            let input = model.input(be, &store, &ids, &mask, b, t).unwrap();
            let lab = be.upload_u32(&lab, &sh).unwrap();
            pollster::block_on(train::step(
                be, &model, &mut store, &mut opt, &input, &lab, 0.25, 1.0,
            ))
            .unwrap()
            .loss
        })
        .collect()
}

type Named = Vec<(String, Vec<f32>)>;

/// Logits within 1e-4 and every gradient within 1e-3 relative error of the candle backend's.
fn assert_same(what: &str, candle: (&[f32], &Named), wgpu: (&[f32], &Named)) {
    let d = candle
        .0
        .iter()
        .zip(wgpu.0)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, nan_max);
    assert!(d < 1e-4, "{what}: logits differ by {d}");
    assert_eq!(candle.1.len(), wgpu.1.len(), "{what}");
    for ((name, a), (_, b)) in candle.1.iter().zip(wgpu.1) {
        let scale = a.iter().map(|x| x.abs()).fold(0f32, nan_max).max(1e-6);
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, nan_max);
        assert!(
            d / scale < 1e-3 || d < 1e-6,
            "{what}: gradient of {name} differs by {d} (scale {scale})"
        );
    }
}

/// Training losses within 1e-3 step by step.
fn assert_same_losses(what: &str, candle: &[f32], wgpu: &[f32]) {
    assert_eq!(candle.len(), wgpu.len(), "{what}");
    for (i, (x, y)) in candle.iter().zip(wgpu).enumerate() {
        assert!((x - y).abs() < 1e-3, "{what}: step {i} loss {x} vs {y}");
    }
}

#[test]
fn every_method_matches_the_candle_backend() {
    let Some(wg) = wgpu() else { return };
    let cb = Candle::cpu();
    let tasks = [
        Task::SequenceClassification { num_labels: 3 },
        Task::TokenClassification { num_labels: 3 },
        Task::MaskedLm,
    ];
    for arch in ["bert", "roberta", "gpt2"] {
        for mut task in tasks {
            // GPT-2 is a decoder: causal LM instead of masked LM. Its token classifier (the
            // encoders' per-position head, checked here with BERT and RoBERTa, on the blocks
            // the causal-LM and sequence cases check) is skipped to keep lavapipe's run short.
            if arch == "gpt2" && task == Task::MaskedLm {
                task = Task::CausalLm;
            }
            if arch == "gpt2" && matches!(task, Task::TokenClassification { .. }) {
                continue;
            }
            for method in methods() {
                let what = format!("{arch} {task:?} {}", method.name());
                let (cm, cs) = build(&cb, arch, task, &method);
                let (wm, ws) = build(&wg, arch, task, &method);
                let (cl, cg) = forward_backward(&cb, &cm, &cs, task);
                let (wl, wgr) = forward_backward(&wg, &wm, &ws, task);
                assert_same(&what, (&cl, &cg), (&wl, &wgr));
                let (a, b) = (
                    losses(&cb, arch, task, &method, 10),
                    losses(&wg, arch, task, &method, 10),
                );
                assert_same_losses(&what, &a, &b);
            }
        }
    }
}

/// Generation with a KV cache on WebGPU (whose attention takes as many queries as keys, so a
/// cached step pads its one query): at every step the same logits as the candle backend,
/// for every method on the tiny GPT-2, following the greedy picks.
#[test]
fn gpt2_cached_generation_matches_the_candle_backend() {
    use tunelab_core::generate::{next_logits, sampling::argmax};
    use tunelab_core::models::kv_cache::KvCache;
    let Some(wg) = wgpu() else { return };
    let cb = Candle::cpu();
    for method in methods() {
        let (cm, cs) = build(&cb, "gpt2", Task::CausalLm, &method);
        let (wm, ws) = build(&wg, "gpt2", Task::CausalLm, &method);
        let (mut cc, mut wc) = (KvCache::default(), KvCache::default());
        let mut feed: Vec<u32> = (5..12).collect();
        for step in 0..8 {
            let a = pollster::block_on(next_logits(&cb, &cm, &cs, &feed, &mut cc)).unwrap();
            let b = pollster::block_on(next_logits(&wg, &wm, &ws, &feed, &mut wc)).unwrap();
            assert_eq!(a.len(), b.len());
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, nan_max);
            assert!(
                diff < 1e-4,
                "{} step {step}: logits differ by {diff}",
                method.name()
            );
            feed = vec![argmax(&a) as u32];
        }
        assert_eq!(cc.len, wc.len);
    }
}

#[test]
fn gpu_memory_does_not_grow_over_200_steps() {
    let Some(wg) = wgpu() else { return };
    let task = Task::SequenceClassification { num_labels: 3 };
    let method = Method::Lora(LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["query".into(), "value".into()],
    });
    let (model, mut store) = build(&wg, "bert", task, &method);
    let mut opt = Optimizer::<Wgpu>::new(AdamWConfig::default(), Schedule::Constant { warmup: 0 });
    let (ids, mask, b, t) = batch();
    let (lab, sh) = labels(task, b, t);
    let mut after_warmup = None;
    for step in 0..200 {
        let input = model.input(&wg, &store, &ids, &mask, b, t).unwrap();
        let l = wg.upload_u32(&lab, &sh).unwrap();
        pollster::block_on(train::step(
            &wg, &model, &mut store, &mut opt, &input, &l, 0.25, 1.0,
        ))
        .unwrap();
        drop((input, l));
        if step == 5 {
            after_warmup = Some(wg.pool_stats());
        }
    }
    let (start, end) = (after_warmup.unwrap(), wg.pool_stats());
    eprintln!("pool after 6 steps: {start:?}; after 200: {end:?}");
    assert_eq!(end.live_buffers, start.live_buffers, "live buffers grew");
    assert_eq!(end.live_bytes, start.live_bytes, "live bytes grew");
    assert!(
        end.pooled_bytes <= start.pooled_bytes,
        "the pool grew: {start:?} -> {end:?}"
    );
    assert_eq!(
        end.created, start.created,
        "buffers were created after warm-up"
    );
    // Scratch (partial sums) is pooled too: the same buffers serve every step.
    assert!(start.scratch_buffers > 0, "{start:?}");
    assert_eq!(
        (end.scratch_buffers, end.scratch_bytes),
        (start.scratch_buffers, start.scratch_bytes),
        "scratch grew"
    );
    wg.release_pool();
    let released = wg.pool_stats();
    assert_eq!((released.pooled_buffers, released.scratch_buffers), (0, 0));
}

/// The real all-MiniLM-L6-v2 (from `cargo xtask assets`), sequence classification, every
/// method: logits, gradients and ten steps on WebGPU against candle. Small batch (2 x 8) so
/// it stays quick on a software adapter.
#[test]
fn the_real_minilm_matches_the_candle_backend() {
    let Some(wg) = wgpu() else { return };
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run `cargo xtask assets`",
        dir.display()
    );
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let cb = Candle::cpu();
    let task = Task::SequenceClassification { num_labels: 2 };
    let (b, t) = (2, 8);
    let ids: Vec<u32> = (0..b * t)
        .map(|i| 1000 + (i as u32 * 997) % 20000)
        .collect();
    let mask: Vec<f32> = (0..b * t)
        .map(|i| if i >= t + 5 { 0.0 } else { 1.0 })
        .collect();
    let lab = vec![0u32, 1];
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn run<B: Backend>(
        be: &B,
        config: &str,
        weights: &[u8],
        task: Task,
        method: &Method,
        ids: &[u32],
        mask: &[f32],
        lab: &[u32],
        b: usize,
        t: usize,
    ) -> (Vec<f32>, Vec<(String, Vec<f32>)>, Vec<f32>) {
        let (tensors, _) = read("model.safetensors", weights).unwrap();
        let mut store = ParamStore::new();
        let model =
            TaskModel::load(be, "minilm", config, tensors, task, method, 1, &mut store).unwrap();
        let input = model.input(be, &store, ids, mask, b, t).unwrap();
        let labels = be.upload_u32(lab, &Shape::new([b])).unwrap();
        let f = model
            .forward(be, &store, &input, Some((&labels, 0.5)), true)
            .unwrap();
        let (mut tape, bound, logits, loss) = (f.tape, f.bound, f.logits, f.loss.unwrap());
        let lv = pollster::block_on(be.download(tape.value(logits).unwrap())).unwrap();
        tape.backward(loss).unwrap();
        let grads = store
            .grads(&mut tape, &bound)
            .into_iter()
            .map(|(id, g)| {
                (
                    store.get(id).name.clone(),
                    pollster::block_on(be.download(&g.unwrap())).unwrap(),
                )
            })
            .collect();
        drop(tape);
        let mut opt = Optimizer::<B>::new(
            AdamWConfig {
                lr: 1e-3,
                ..Default::default()
            },
            Schedule::Linear {
                warmup: 2,
                total: 10,
            },
        );
        let losses = (0..10)
            .map(|_| {
                pollster::block_on(train::step(
                    be, &model, &mut store, &mut opt, &input, &labels, 0.5, 1.0,
                ))
                .unwrap()
                .loss
            })
            .collect();
        (lv, grads, losses)
    }
    for method in methods() {
        let (cl, cg, closs) = run(
            &cb, &config, &weights, task, &method, &ids, &mask, &lab, b, t,
        );
        let (wl, wgr, wloss) = run(
            &wg, &config, &weights, task, &method, &ids, &mask, &lab, b, t,
        );
        let name = method.name();
        let d = cl
            .iter()
            .zip(&wl)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, nan_max);
        assert!(d < 1e-4, "{name}: logits differ by {d}");
        for ((n, a), (_, g)) in cg.iter().zip(&wgr) {
            let scale = a.iter().map(|x| x.abs()).fold(0f32, nan_max).max(1e-6);
            let d = a
                .iter()
                .zip(g)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, nan_max);
            assert!(
                d / scale < 1e-3 || d < 1e-6,
                "{name}: gradient of {n} differs by {d} (scale {scale})"
            );
        }
        for (i, (x, y)) in closs.iter().zip(&wloss).enumerate() {
            assert!((x - y).abs() < 1e-3, "{name}: step {i} loss {x} vs {y}");
        }
    }
}

/// The larger of two differences, NaN if either is (`f32::max` drops NaN, so a NaN
/// difference would pass a tolerance check).
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}
