//! PyTorch parity and the PEFT contract, one table row per (architecture, method).
//!
//! Fixtures (`tests/fixtures/parity-<kind>-<method>.safetensors`, from
//! `tests/fixtures/make_fixtures.py`) hold PyTorch + PEFT's logits, loss, every trainable
//! gradient and 10 AdamW steps' losses for a random-init tiny BERT, RoBERTa and GPT-2.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

mod common;
#[path = "parity/generation.rs"]
mod generation;
use common::rel_err;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tunelab_candle::Candle;
use tunelab_core::Shape;
use tunelab_core::backend::{Backend, IGNORE_INDEX};
use tunelab_core::models::heads::Task;
use tunelab_core::models::task_model::TaskModel;
use tunelab_core::optim::{AdamWConfig, Optimizer, Schedule};
use tunelab_core::params::ParamStore;
use tunelab_core::peft::{Method, lora::LoraConfig, prompt::PromptConfig};
use tunelab_core::safetensors_io::{HostTensor, read};
use tunelab_core::trainer::step as train;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

struct Fixture {
    floats: BTreeMap<String, HostTensor>,
    ints: BTreeMap<String, Vec<i64>>,
    trainable: usize,
}

fn fixture(stem: &str) -> Fixture {
    let bytes = std::fs::read(fixtures().join(format!("{stem}.safetensors"))).unwrap();
    let (floats, _) = read("fixture", &bytes).unwrap();
    let ints = tunelab_core::safetensors_io::read_ints("fixture", &bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let trainable = meta.metadata().as_ref().unwrap()["trainable"]
        .parse()
        .unwrap();
    Fixture {
        floats,
        ints,
        trainable,
    }
}

fn method(kind: &str, name: &str) -> Method {
    match name {
        "full" => Method::Full(Default::default()),
        "bitfit" => Method::Bitfit(Default::default()),
        // GPT-2 takes the default targets, which become the family's (`c_attn`), as PEFT's.
        "lora" if kind == "gpt2" => Method::Lora(LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            ..Default::default()
        }),
        "lora" => Method::Lora(LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["query".into(), "value".into()],
        }),
        "prompt" => Method::Prompt(PromptConfig {
            num_virtual_tokens: 3,
            init_token_ids: vec![],
        }),
        "ia3" => Method::Ia3(Default::default()),
        other => panic!("{other}"),
    }
}

fn host(t: &candle_core::Tensor) -> Vec<f32> {
    pollster::block_on(Candle::cpu().download(t)).unwrap()
}

/// The model as PyTorch had it: checkpoint, method, and the method's initial values.
fn model(kind: &str, task: Task, m: &str, fx: &Fixture) -> (TaskModel<Candle>, ParamStore<Candle>) {
    let be = Candle::cpu();
    let dir = fixtures().join(format!("tiny-{kind}"));
    let mut store = ParamStore::new();
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let (tensors, _) = read("model.safetensors", &weights).unwrap();
    let model = TaskModel::load(
        &be,
        &format!("tiny-{kind}"),
        &config,
        tensors,
        task,
        &method(kind, m),
        0,
        &mut store,
    )
    .unwrap();
    for (name, t) in &fx.floats {
        if let Some(param) = name.strip_prefix("init.") {
            let id = store.id(param).unwrap();
            store.set_value(id, be.upload(&t.data, &t.shape).unwrap());
        }
    }
    (model, store)
}

/// `task`: `seq`, `token`, `mlm` or `clm`.
fn check(kind: &str, task_name: &str, m: &str) {
    let be = Candle::cpu();
    let (task, stem) = match task_name {
        "seq" if kind == "gpt2" => (
            Task::SequenceClassification { num_labels: 3 },
            format!("parity-{kind}-seq-{m}"),
        ),
        "seq" => (
            Task::SequenceClassification { num_labels: 3 },
            format!("parity-{kind}-{m}"),
        ),
        "token" => (
            Task::TokenClassification { num_labels: 5 },
            format!("parity-{kind}-token-{m}"),
        ),
        "clm" => (Task::CausalLm, format!("parity-{kind}-clm-{m}")),
        _ => (Task::MaskedLm, format!("parity-{kind}-mlm-{m}")),
    };
    let fx = fixture(&stem);
    let (model, store) = model(kind, task, m, &fx);
    let ids: Vec<u32> = fx.ints["input_ids"].iter().map(|&x| x as u32).collect();
    let mask: Vec<f32> = fx.ints["attention_mask"]
        .iter()
        .map(|&x| x as f32)
        .collect();
    let labels: Vec<u32> = fx.ints["labels"]
        .iter()
        .map(|&x| if x < 0 { IGNORE_INDEX } else { x as u32 })
        .collect();
    let bsz = fx.floats["logits"].shape.dims()[0];
    let len = ids.len() / bsz;
    // Causal LM's labels are the tokens: the model says which logit predicts which.
    let (labels, count) = model.targets(&be, &store, &labels, bsz, len);
    let labels_t = be.upload_u32(&labels, &Shape::new([labels.len()])).unwrap();
    // Mean over the labels that count, as PyTorch's cross-entropy with ignore_index.
    let scale = 1.0 / count as f32;
    let input = model.input(&be, &store, &ids, &mask, bsz, len).unwrap();
    let case = format!("{kind}/{task_name}/{m}");

    // The PEFT contract: the same trainable set (and count) as PEFT.
    let mut ours: Vec<String> = store
        .trainable()
        .into_iter()
        .map(|id| store.get(id).name.clone())
        .collect();
    ours.sort();
    let mut theirs: Vec<String> = fx
        .floats
        .keys()
        .filter_map(|k| k.strip_prefix("grad.").map(str::to_string))
        .collect();
    theirs.sort();
    assert_eq!(ours, theirs, "{case}: trainable parameters");
    assert_eq!(store.counts(&be).0, fx.trainable, "{case}: trainable count");
    // The web app's live count, from shapes alone, agrees with the loaded model.
    let config =
        std::fs::read_to_string(fixtures().join(format!("tiny-{kind}/config.json"))).unwrap();
    let config = tunelab_core::models::ModelConfig::from_json("config.json", &config).unwrap();
    assert_eq!(
        tunelab_core::models::task_model::count_params(&config, task, &method(kind, m)).unwrap(),
        store.counts(&be),
        "{case}: counted from the config"
    );

    // Logits, loss and every gradient.
    let f = model
        .forward(&be, &store, &input, Some((&labels_t, scale)), true)
        .unwrap();
    let (mut tape, bound, logits, loss) = (f.tape, f.bound, f.logits, f.loss.unwrap());
    let got = host(tape.value(logits).unwrap());
    let want = &fx.floats["logits"].data;
    assert_eq!(got.len(), want.len(), "{case}: logits size");
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, nan_max);
    assert!(diff < 1e-4, "{case}: logits max abs diff {diff}");
    let l = host(tape.value(loss).unwrap())[0];
    assert!(
        (l - fx.floats["loss"].data[0]).abs() < 1e-5,
        "{case}: loss {l}"
    );
    tape.backward(loss).unwrap();
    let grads = store.grads(&mut tape, &bound);
    for (id, g) in &grads {
        let name = &store.get(*id).name;
        let g = host(
            g.as_ref()
                .unwrap_or_else(|| panic!("{case}: {name} got no gradient")),
        );
        let want = &fx.floats[&format!("grad.{name}")].data;
        if name.ends_with("attention.self.key.bias") {
            // Softmax ignores a per-row constant, and q.(k + b) shifts every score of a row by
            // q.b: the key bias's true gradient is exactly zero. Both sides hold rounding noise.
            let max = g.iter().chain(want).fold(0f32, |m, v| m.max(v.abs()));
            assert!(max < 1e-6, "{case}: {name} should be ~0, max {max}");
            continue;
        }
        assert!(
            g.iter().any(|&v| v != 0.0),
            "{case}: {name} has an all-zero gradient"
        );
        let e = rel_err(&g, want);
        assert!(e < 1e-3, "{case}: gradient of {name}: relative error {e}");
    }

    if task == Task::CausalLm {
        generation::check_generation(&case, &model, &store, &fx, &ids[..len]);
    }

    // Ten AdamW steps with linear warmup and clipping: the same losses; frozen weights untouched.
    let (model, mut store) = self::model(kind, task, m, &fx);
    let frozen: Vec<(String, Vec<f32>)> = store
        .iter()
        .filter(|(_, p)| !p.trainable)
        .map(|(_, p)| (p.name.clone(), host(&p.value)))
        .collect();
    let mut opt = Optimizer::<Candle>::new(
        AdamWConfig {
            lr: 5e-3,
            weight_decay: 0.01,
            ..Default::default()
        },
        Schedule::Linear {
            warmup: 3,
            total: 10,
        },
    );
    let want = &fx.floats["losses"].data;
    for (step, want) in want.iter().enumerate() {
        let stats = pollster::block_on(train::step(
            &be, &model, &mut store, &mut opt, &input, &labels_t, scale, 1.0,
        ))
        .unwrap();
        assert!(
            (stats.loss - want).abs() < 1e-3,
            "{case}: step {step} loss {} vs {want}",
            stats.loss
        );
    }
    for (name, before) in frozen {
        let after = host(&store.get(store.id(&name).unwrap()).value);
        assert!(before == after, "{case}: frozen {name} changed");
    }
}

#[test]
fn bert_full() {
    check("bert", "seq", "full");
}
#[test]
fn bert_bitfit() {
    check("bert", "seq", "bitfit");
}
#[test]
fn bert_lora() {
    check("bert", "seq", "lora");
}
#[test]
fn bert_prompt() {
    check("bert", "seq", "prompt");
}
#[test]
fn bert_ia3() {
    check("bert", "seq", "ia3");
}
#[test]
fn roberta_ia3() {
    check("roberta", "seq", "ia3");
}
#[test]
fn roberta_full() {
    check("roberta", "seq", "full");
}
#[test]
fn roberta_bitfit() {
    check("roberta", "seq", "bitfit");
}
#[test]
fn roberta_lora() {
    check("roberta", "seq", "lora");
}
#[test]
fn roberta_prompt() {
    check("roberta", "seq", "prompt");
}
#[test]
fn bert_token_full() {
    check("bert", "token", "full");
}
#[test]
fn bert_token_lora() {
    check("bert", "token", "lora");
}
#[test]
fn bert_mlm_full() {
    check("bert", "mlm", "full");
}
#[test]
fn roberta_token_full() {
    check("roberta", "token", "full");
}
#[test]
fn roberta_token_lora() {
    check("roberta", "token", "lora");
}
#[test]
fn roberta_mlm_full() {
    check("roberta", "mlm", "full");
}
#[test]
fn gpt2_clm_full() {
    check("gpt2", "clm", "full");
}
#[test]
fn gpt2_clm_bitfit() {
    check("gpt2", "clm", "bitfit");
}
#[test]
fn gpt2_clm_lora() {
    check("gpt2", "clm", "lora");
}
#[test]
fn gpt2_clm_prompt() {
    check("gpt2", "clm", "prompt");
}
#[test]
fn gpt2_clm_ia3() {
    check("gpt2", "clm", "ia3");
}
#[test]
fn gpt2_seq_lora() {
    check("gpt2", "seq", "lora");
}
#[test]
fn gpt2_seq_full() {
    check("gpt2", "seq", "full");
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

/// GPT-2's tokenizer from `tokenizer.json`, and the one made from `vocab.json` and
/// `merges.txt`, encode as transformers' `GPT2TokenizerFast` does (`tiny-gpt2/tokens.json`).
#[test]
fn gpt2_tokenizers_match_transformers() {
    use tunelab_core::tokenizer::{Tokenizer, byte_level_bpe_json};
    let dir = fixtures().join("tiny-gpt2");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let from_files = byte_level_bpe_json(
        "vocab.json",
        &read("vocab.json"),
        "merges.txt",
        &read("merges.txt"),
    )
    .unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&read("tokens.json")).unwrap();
    assert!(!cases.is_empty());
    for json in [read("tokenizer.json"), from_files] {
        let tok = Tokenizer::from_json("tokenizer.json", json.as_bytes(), 300).unwrap();
        for case in &cases {
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let text = case["text"].as_str().unwrap();
            assert_eq!(tok.encode_plain(text).unwrap(), want, "{text:?}");
        }
    }
    let e = byte_level_bpe_json("v.json", "{}", "m.txt", "#version: 0.2\nab\n").unwrap_err();
    assert!(
        e.to_string().contains("m.txt") && e.to_string().contains("line 2"),
        "{e}"
    );
}
