//! The trainer on a tiny BERT: gradient accumulation equals the large batch, a resumed run
//! repeats the uninterrupted one, divergence stops without touching weights, evaluation
//! streams, and exports carry PEFT's key names and import back to the same model.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::collections::BTreeMap;
use std::path::PathBuf;
use tunelab_candle::Candle;
use tunelab_core::backend::{Backend, IGNORE_INDEX};
use tunelab_core::data::{Feature, FeatureKind, Features, Labels, Masking};
use tunelab_core::export::{self, ExportInfo};
use tunelab_core::models::heads::Task;
use tunelab_core::models::task_model::TaskModel;
use tunelab_core::params::ParamStore;
use tunelab_core::peft::{Method, lora::LoraConfig, prompt::PromptConfig};
use tunelab_core::rng::Rng;
use tunelab_core::safetensors_io::read;
use tunelab_core::trainer::step::StepError;
use tunelab_core::trainer::{EvalOptions, TaskKind, TrainConfig, TrainError, Trainer, evaluate};

mod exports;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-bert")
}

fn lora() -> Method {
    lora_dropout(0.0)
}

fn lora_dropout(dropout: f32) -> Method {
    Method::Lora(LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout,
        target_modules: vec!["query".into(), "value".into()],
    })
}

fn task(kind: TaskKind, classes: usize) -> Task {
    match kind {
        TaskKind::Classification => Task::SequenceClassification {
            num_labels: classes,
        },
        TaskKind::TokenClassification => Task::TokenClassification {
            num_labels: classes,
        },
        TaskKind::MaskedLm => Task::MaskedLm,
        TaskKind::CausalLm => Task::CausalLm,
    }
}

fn build(kind: TaskKind, method: &Method, seed: u64) -> (TaskModel<Candle>, ParamStore<Candle>) {
    let be = Candle::cpu();
    let config = std::fs::read_to_string(tiny().join("config.json")).unwrap();
    let (tensors, _) = read(
        "model.safetensors",
        &std::fs::read(tiny().join("model.safetensors")).unwrap(),
    )
    .unwrap();
    let mut store = ParamStore::new();
    let model = TaskModel::load(
        &be,
        "tiny-bert",
        &config,
        tensors,
        task(kind, 3),
        method,
        seed,
        &mut store,
    )
    .unwrap();
    (model, store)
}

/// `n` examples of lengths 3..=12 (specials 1 and 2 around ids 5..61).
fn features(kind: TaskKind, n: usize) -> Features {
    let mut rng = Rng::new(9);
    let items = (0..n)
        .map(|i| {
            let len = 3 + (i * 7) % 10;
            let mut ids = vec![1];
            ids.extend((0..len - 2).map(|_| 5 + rng.below(56) as u32));
            ids.push(2);
            let labels = match kind {
                TaskKind::Classification => vec![(i % 3) as u32],
                TaskKind::TokenClassification => ids
                    .iter()
                    .enumerate()
                    .map(|(t, &id)| {
                        if t == 0 || t == len - 1 || id % 4 == 0 {
                            IGNORE_INDEX
                        } else {
                            id % 3
                        }
                    })
                    .collect(),
                TaskKind::MaskedLm | TaskKind::CausalLm => vec![],
            };
            Feature {
                ids,
                labels,
                line: i + 1,
            }
        })
        .collect();
    Features {
        kind: match kind {
            TaskKind::Classification => FeatureKind::Sequence,
            TaskKind::TokenClassification => FeatureKind::Token,
            TaskKind::MaskedLm => FeatureKind::MaskedLm,
            TaskKind::CausalLm => FeatureKind::CausalLm,
        },
        items,
        special_lead: 1,
        special_tail: 1,
    }
}

fn labels() -> Labels {
    Labels::new(vec!["O".into(), "B-X".into(), "I-X".into()])
}

fn trainer(kind: TaskKind, method: Method, cfg: TrainConfig, n: usize) -> Trainer<Candle> {
    let (model, store) = build(kind, &method, 7);
    let masking = (kind == TaskKind::MaskedLm).then_some(Masking {
        probability: 0.15,
        mask_id: 3,
        vocab_size: 61,
    });
    let task = match kind {
        TaskKind::Classification => "classification",
        TaskKind::TokenClassification => "token-classification",
        TaskKind::MaskedLm => "masked-lm",
        TaskKind::CausalLm => "causal-lm",
    };
    let cfg = TrainConfig {
        task: task.into(),
        method,
        ..cfg
    };
    Trainer::new(
        Candle::cpu(),
        model,
        store,
        cfg,
        kind,
        labels(),
        features(kind, n),
        0,
        masking,
    )
    .unwrap()
}

fn trainable_values(t: &Trainer<Candle>) -> BTreeMap<String, Vec<f32>> {
    t.store
        .trainable()
        .into_iter()
        .map(|id| {
            let p = t.store.get(id);
            (
                p.name.clone(),
                pollster::block_on(t.backend.download(&p.value)).unwrap(),
            )
        })
        .collect()
}

fn max_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(k, va)| va.iter().zip(&b[k]).map(|(x, y)| (x - y).abs()))
        .fold(0.0, nan_max)
}

#[test]
fn grad_accumulation_equals_the_large_batch() {
    let base = TrainConfig {
        lr: Some(1e-2),
        max_steps: Some(3),
        warmup_steps: Some(1),
        seed: 5,
        ..Default::default()
    };
    let mut big = trainer(
        TaskKind::TokenClassification,
        Method::Full(Default::default()),
        TrainConfig {
            batch_size: 4,
            grad_accum: 1,
            ..base.clone()
        },
        12,
    );
    let mut acc = trainer(
        TaskKind::TokenClassification,
        Method::Full(Default::default()),
        TrainConfig {
            batch_size: 2,
            grad_accum: 2,
            ..base
        },
        12,
    );
    assert_eq!(big.total_steps(), 3);
    assert_eq!(acc.total_steps(), 3);
    for _ in 0..3 {
        let a = pollster::block_on(big.train_step()).unwrap();
        let b = pollster::block_on(acc.train_step()).unwrap();
        assert_eq!(a.tokens, b.tokens, "same examples");
        assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
        assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm.max(1.0));
    }
    let d = max_diff(&trainable_values(&big), &trainable_values(&acc));
    assert!(d < 1e-5, "weights differ by {d}");
    // The micro-batches had different numbers of loss tokens, so averaging their means would
    // not have matched: check the data really is uneven.
    let f = acc.train_features();
    let counts: Vec<usize> = f
        .items
        .iter()
        .map(|x| x.labels.iter().filter(|&&l| l != IGNORE_INDEX).count())
        .collect();
    assert!(counts.iter().any(|&c| c != counts[0]), "{counts:?}");
}

/// On a pool of 2 threads a step runs its batch as 2 concurrent passes (half the rows each,
/// one per thread); on 1 thread as one pass. Both train the same: losses, gradient norms and
/// weights agree to rounding (full fine-tuning with token labels of uneven counts, and prompt
/// tuning, whose first layer keeps the prompt's rows apart).
#[test]
fn concurrent_passes_train_as_one_pass() {
    for (kind, method) in [
        (
            TaskKind::TokenClassification,
            Method::Full(Default::default()),
        ),
        (
            TaskKind::Classification,
            Method::Prompt(PromptConfig {
                num_virtual_tokens: 3,
                init_token_ids: Vec::new(),
            }),
        ),
    ] {
        let cfg = TrainConfig {
            lr: Some(1e-2),
            max_steps: Some(3),
            warmup_steps: Some(1),
            seed: 5,
            batch_size: 5,
            ..Default::default()
        };
        let run = |threads: usize| {
            let mut t = trainer(kind, method.clone(), cfg.clone(), 15);
            tunelab_candle::on_pool(threads, || {
                let passes = t.backend.concurrent_passes();
                let reports: Vec<_> = (0..3)
                    .map(|_| pollster::block_on(t.train_step()).unwrap())
                    .collect();
                (passes, reports, trainable_values(&t))
            })
            .unwrap()
        };
        let (one, two) = (run(1), run(2));
        assert_eq!((one.0, two.0), (1, 2), "{method:?}");
        for (a, b) in one.1.iter().zip(&two.1) {
            assert_eq!(a.tokens, b.tokens);
            assert!(
                (a.loss - b.loss).abs() < 1e-5,
                "{method:?}: {} vs {}",
                a.loss,
                b.loss
            );
            assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm.max(1.0));
        }
        let d = max_diff(&one.2, &two.2);
        assert!(d < 1e-5, "{method:?}: weights differ by {d}");
    }
}

#[test]
fn a_resumed_run_repeats_the_uninterrupted_one() {
    resume_repeats(lora());
}

#[test]
fn a_resumed_run_with_lora_dropout_draws_the_same_masks() {
    resume_repeats(lora_dropout(0.3));
}

#[test]
fn lora_dropout_changes_training_steps_but_not_evaluation() {
    let cfg = TrainConfig {
        batch_size: 4,
        max_steps: Some(2),
        lr: Some(5e-3),
        warmup_steps: Some(0),
        seed: 3,
        ..Default::default()
    };
    let kind = TaskKind::Classification;
    let mut plain = trainer(kind, lora(), cfg.clone(), 8);
    let mut dropped = trainer(kind, lora_dropout(0.5), cfg, 8);
    let val = features(kind, 8);
    // Evaluation never drops: the same model gives the same loss.
    let e0 = pollster::block_on(plain.evaluate(&val)).unwrap().metrics["loss"];
    let e1 = pollster::block_on(dropped.evaluate(&val)).unwrap().metrics["loss"];
    assert_eq!(e0, e1);
    // B starts at zero, so the first step's loss is the same; its update is not.
    let a = pollster::block_on(plain.train_step()).unwrap();
    let b = pollster::block_on(dropped.train_step()).unwrap();
    assert_eq!(a.loss, b.loss);
    assert!(max_diff(&trainable_values(&plain), &trainable_values(&dropped)) > 1e-6);
    let a = pollster::block_on(plain.train_step()).unwrap();
    let b = pollster::block_on(dropped.train_step()).unwrap();
    assert_ne!(a.loss, b.loss, "dropout changes the training forward pass");
}

/// Masked LM: exercises the masking RNG, the shuffled order across an epoch boundary
/// (12 examples / batch 4 = 3 steps per epoch), the schedule, AdamW moments and (with
/// dropout) the dropout masks.
fn resume_repeats(method: Method) {
    let lora = || method.clone();
    let cfg = TrainConfig {
        batch_size: 4,
        max_steps: Some(7),
        lr: Some(5e-3),
        seed: 11,
        ..Default::default()
    };
    let mut whole = trainer(TaskKind::MaskedLm, lora(), cfg.clone(), 12);
    let losses: Vec<f32> = (0..7)
        .map(|_| pollster::block_on(whole.train_step()).unwrap().loss)
        .collect();

    let mut first = trainer(TaskKind::MaskedLm, lora(), cfg.clone(), 12);
    for want in &losses[..4] {
        assert_eq!(pollster::block_on(first.train_step()).unwrap().loss, *want);
    }
    let bytes = pollster::block_on(first.checkpoint()).unwrap();
    drop(first);
    // A fresh process would build the model from the same config (LoRA A gets a different
    // random init here, on purpose: the checkpoint must overwrite it).
    let (model, store) = build(TaskKind::MaskedLm, &lora(), 999);
    let mut resumed = Trainer::new(
        Candle::cpu(),
        model,
        store,
        TrainConfig {
            task: "masked-lm".into(),
            method: lora(),
            ..cfg
        },
        TaskKind::MaskedLm,
        labels(),
        features(TaskKind::MaskedLm, 12),
        0,
        Some(Masking {
            probability: 0.15,
            mask_id: 3,
            vocab_size: 61,
        }),
    )
    .unwrap();
    resumed.restore("ckpt", &bytes).unwrap();
    assert_eq!(resumed.state.step, 4);
    assert_eq!(resumed.state.epoch, 1);
    for want in &losses[4..] {
        let got = pollster::block_on(resumed.train_step()).unwrap().loss;
        assert_eq!(got, *want, "resumed loss");
    }
    assert!(resumed.is_done());
    assert!(max_diff(&trainable_values(&whole), &trainable_values(&resumed)) == 0.0);
}

#[test]
fn a_checkpoint_for_another_method_or_shape_is_refused() {
    let cfg = TrainConfig {
        batch_size: 4,
        max_steps: Some(2),
        ..Default::default()
    };
    let t = trainer(TaskKind::Classification, lora(), cfg.clone(), 8);
    let bytes = pollster::block_on(t.checkpoint()).unwrap();
    let mut other = trainer(
        TaskKind::Classification,
        Method::Bitfit(Default::default()),
        cfg,
        8,
    );
    let e = other.restore("ckpt.safetensors", &bytes).unwrap_err();
    assert!(e.to_string().contains("method `lora`"), "{e}");
    let e = other
        .restore("x.safetensors", b"not a checkpoint")
        .unwrap_err();
    assert!(
        e.to_string().starts_with("checkpoint x.safetensors:"),
        "{e}"
    );
}

#[test]
fn divergence_stops_the_run_before_touching_the_weights() {
    let mut t = trainer(
        TaskKind::Classification,
        Method::Full(Default::default()),
        TrainConfig {
            batch_size: 4,
            lr: Some(1e30),
            warmup_steps: Some(0),
            max_grad_norm: 0.0,
            max_steps: Some(20),
            ..Default::default()
        },
        12,
    );
    let mut failed = None;
    for _ in 0..20 {
        let before = trainable_values(&t);
        match pollster::block_on(t.train_step()) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(max_diff(&before, &trainable_values(&t)), 0.0);
                failed = Some(e);
                break;
            }
        }
    }
    match failed {
        Some(TrainError::Step {
            source: StepError::NonFinite { .. },
            step,
        }) => assert!(step >= 2, "the first step is finite"),
        other => panic!("expected a non-finite loss error, got {other:?}"),
    }
}

#[test]
fn evaluation_streams_the_same_metrics_at_any_batch_size() {
    for kind in [TaskKind::Classification, TaskKind::TokenClassification] {
        let t = trainer(kind, lora(), TrainConfig::default(), 4);
        let f = features(kind, 11);
        let run = |bs: usize| {
            pollster::block_on(evaluate(
                &t.backend,
                &t.model,
                &t.store,
                kind,
                &t.labels,
                &f,
                EvalOptions {
                    batch_size: bs,
                    pad_id: 0,
                    masking: None,
                    max_examples: None,
                },
            ))
            .unwrap()
        };
        let (a, b) = (run(11), run(3));
        for (k, v) in &a.metrics {
            assert!(
                (v - b.metrics[k]).abs() < 1e-5,
                "{kind:?} {k}: {v} vs {}",
                b.metrics[k]
            );
        }
        assert_eq!(a.examples, 11);
        if kind == TaskKind::Classification {
            assert_eq!(a.confusion.as_ref().unwrap().total(), 11);
            assert_eq!(a.confusion, b.confusion);
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

/// The tests' comparisons see NaN: a NaN difference is never within a tolerance.
#[test]
fn the_difference_helpers_do_not_drop_nan() {
    let map = |v: &[f32]| BTreeMap::from([("w".to_string(), v.to_vec())]);
    assert!(max_diff(&map(&[1.0, f32::NAN, 3.0]), &map(&[1.0, 2.0, 3.0])).is_nan());
    assert!(max_diff(&map(&[f32::NAN]), &map(&[f32::NAN])).is_nan());
    assert_eq!(max_diff(&map(&[1.0, 2.0]), &map(&[1.5, 2.0])), 0.5);
}
