//! The real all-MiniLM-L6-v2 from `assets/` against PyTorch's numbers
//! (`tests/fixtures/minilm_sentences.safetensors`, written by `tests/fixtures/make_fixtures.py`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::path::PathBuf;
use tunelab_candle::Candle;
use tunelab_core::Shape;
use tunelab_core::backend::Backend;
use tunelab_core::models::EncoderInput;
use tunelab_core::models::bert::{Bert, BertConfig};
use tunelab_core::nn::{Adapters, Ctx};
use tunelab_core::params::ParamStore;
use tunelab_core::safetensors_io::read;
use tunelab_core::tape::Tape;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The model folder, or None (test skipped) when assets are not installed and the test run
/// does not demand them (`cargo xtask test` sets TUNELAB_REQUIRE_ASSETS=1).
fn minilm_dir() -> Option<PathBuf> {
    let dir = root().join("assets/models/all-MiniLM-L6-v2");
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("TUNELAB_REQUIRE_ASSETS").is_none(),
        "{} is missing: run `cargo xtask assets`",
        dir.display()
    );
    eprintln!("skipping: {} is missing", dir.display());
    None
}

fn fixture_ints(t: &std::collections::BTreeMap<String, Vec<i64>>, name: &str) -> Vec<i64> {
    t[name].clone()
}

fn read_ints(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<i64>> {
    tunelab_core::safetensors_io::read_ints("fixture", bytes).unwrap()
}

#[test]
fn minilm_matches_pytorch_hidden_states_and_mean_pooling() {
    let Some(dir) = minilm_dir() else { return };
    let fixture = std::fs::read(root().join("tests/fixtures/minilm_sentences.safetensors"))
        .expect("fixture: run tests/fixtures/make_fixtures.py");
    let (floats, _) = read("minilm_sentences.safetensors", &fixture).unwrap();
    let ints = read_ints(&fixture);
    let ids = fixture_ints(&ints, "input_ids");
    let types = fixture_ints(&ints, "token_type_ids");
    let mask: Vec<f32> = fixture_ints(&ints, "attention_mask")
        .iter()
        .map(|&m| m as f32)
        .collect();
    let hidden_ref = &floats["last_hidden_state"];
    let (bsz, len, c) = (
        hidden_ref.shape.dims()[0],
        hidden_ref.shape.dims()[1],
        hidden_ref.shape.dims()[2],
    );

    let be = Candle::cpu();
    let config = BertConfig::from_json(
        "config.json",
        &std::fs::read_to_string(dir.join("config.json")).unwrap(),
    )
    .unwrap();
    let mut store = ParamStore::new();
    let (model, rest) = Bert::load(
        &be,
        config,
        "model.safetensors",
        read(
            "model.safetensors",
            &std::fs::read(dir.join("model.safetensors")).unwrap(),
        )
        .unwrap()
        .0,
        true,
        &mut store,
    )
    .unwrap();
    assert!(rest.is_empty(), "unused tensors: {:?}", rest.keys());
    assert!(model.pooler.is_some());
    store.freeze_all();
    let (trainable, total) = store.counts(&be);
    assert_eq!((trainable, total), (0, 22_713_216));

    let sh = Shape::new([bsz, len]);
    let u32s = |v: &[i64]| v.iter().map(|&x| x as u32).collect::<Vec<u32>>();
    let input = EncoderInput {
        ids: be.upload_u32(&u32s(&ids), &sh).unwrap(),
        token_types: be.upload_u32(&u32s(&types), &sh).unwrap(),
        positions: be
            .upload_u32(&model.position_ids(&mask, bsz, len), &sh)
            .unwrap(),
        mask: be.upload(&mask, &sh).unwrap(),
        last_rows: be.upload_u32(&[0; 4][..bsz], &Shape::new([bsz])).unwrap(),
    };
    let mut tape = Tape::new(be.clone());
    let bound = store.bind(&mut tape);
    let adapters = Adapters::default();
    let mut cx = Ctx {
        tape: &mut tape,
        bound: &bound,
        adapters: &adapters,
        dropout: None,
    };
    let h = model.encode(&mut cx, &input, None).unwrap();
    let hidden = pollster::block_on(be.download(tape.value(h).unwrap())).unwrap();

    // Hidden states of real tokens (padding rows are unconstrained in both implementations'
    // outputs but do not enter the pooled embedding).
    let mut max_diff = 0f32;
    for b in 0..bsz {
        for t in 0..len {
            if mask[b * len + t] == 0.0 {
                continue;
            }
            for k in 0..c {
                let i = (b * len + t) * c + k;
                max_diff = max_diff.max((hidden[i] - hidden_ref.data[i]).abs());
            }
        }
    }
    assert!(max_diff < 1e-4, "last hidden state max abs diff {max_diff}");

    let pooled_ref = &floats["mean_pooled"];
    for b in 0..bsz {
        let n: f32 = mask[b * len..(b + 1) * len].iter().sum();
        for k in 0..c {
            let s: f32 = (0..len)
                .map(|t| hidden[(b * len + t) * c + k] * mask[b * len + t])
                .sum();
            let got = s / n;
            let want = pooled_ref.data[b * c + k];
            assert!(
                (got - want).abs() < 1e-4,
                "sentence {b} dim {k}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn minilm_tokenizer_matches_pytorch_ids() {
    let Some(dir) = minilm_dir() else { return };
    let fixture =
        std::fs::read(root().join("tests/fixtures/minilm_sentences.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&fixture).unwrap();
    let sentences: Vec<String> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["sentences"]).unwrap();
    let ints = read_ints(&fixture);
    let json = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let tok =
        tunelab_core::tokenizer::Tokenizer::from_json("tokenizer.json", &json, 30522).unwrap();
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let batch = tok.encode_batch(&texts, 128).unwrap();
    let want: Vec<u32> = ints["input_ids"].iter().map(|&x| x as u32).collect();
    assert_eq!(
        batch.ids, want,
        "the saved padding to 128 is off; dynamic padding matches PyTorch's"
    );
    let mask: Vec<f32> = ints["attention_mask"].iter().map(|&x| x as f32).collect();
    assert_eq!(batch.mask, mask);

    // A tokenizer larger than the model's vocabulary belongs to another model.
    let err =
        tunelab_core::tokenizer::Tokenizer::from_json("tokenizer.json", &json, 61).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tokenizer.json: the tokenizer has 30522 tokens but the model's vocab_size is 61; they belong to different models"
    );

    // Word-level labels go to first sub-words only.
    let words = vec![vec!["Tunelab", "tokenizes", "words"]];
    let b = tok.encode_words(&words, 128).unwrap();
    let starts: Vec<u32> = b.word_starts.clone();
    assert_eq!(starts[0], tunelab_core::backend::IGNORE_INDEX, "[CLS]");
    assert_eq!(starts[1], 0);
    let firsts: Vec<u32> = starts
        .iter()
        .copied()
        .filter(|&s| s != tunelab_core::backend::IGNORE_INDEX)
        .collect();
    assert_eq!(firsts, vec![0, 1, 2], "one start per word: {starts:?}");
    assert!(b.len > 5, "sub-words split the rare words: {:?}", b.ids);
}

#[test]
fn invalid_tokenizer_json_is_a_typed_error() {
    let err =
        tunelab_core::tokenizer::Tokenizer::from_json("t.json", b"{\"not\": \"a tokenizer\"}", 10)
            .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("t.json: not a valid tokenizer.json"),
        "{err}"
    );
}

/// A run set up from the real model's files reads the weights only after its checks: a job
/// the memory budget refuses never reads them, one that passes reads them once.
#[test]
fn the_set_up_reads_weights_only_after_its_checks() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tunelab_core::preflight::MemoryBudget;
    use tunelab_core::session::{self, DataText, ModelFiles, RunInputs, Weights};
    use tunelab_core::trainer::TrainConfig;
    let Some(dir) = minilm_dir() else { return };
    let reads = Arc::new(AtomicUsize::new(0));
    let (counter, weights_file) = (reads.clone(), dir.join("model.safetensors"));
    let model = ModelFiles {
        name: dir.display().to_string(),
        config_json: std::fs::read_to_string(dir.join("config.json")).unwrap(),
        weights: Weights::Deferred(Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Weights::Single(std::fs::read(&weights_file).unwrap()))
        })),
        tokenizer_json: std::fs::read(dir.join("tokenizer.json")).unwrap(),
    };
    let train = DataText {
        name: "d.csv".into(),
        text: "text,label\ngood film,pos\nbad film,neg\nfine,pos\nawful,neg\n".into(),
    };
    let cfg = TrainConfig {
        task: "classification".into(),
        max_len: 16,
        ..Default::default()
    };
    let refused = session::prepare(
        tunelab_candle::Candle::cpu(),
        &cfg,
        RunInputs {
            memory: Some(MemoryBudget {
                available: 1 << 20,
                on_host: true,
            }),
            ..RunInputs::new(&model, &train)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(refused.contains("this job needs about"), "{refused}");
    assert_eq!(
        reads.load(Ordering::SeqCst),
        0,
        "a refused job read the weights"
    );
    let s = session::prepare(
        tunelab_candle::Candle::cpu(),
        &cfg,
        RunInputs::new(&model, &train),
    )
    .unwrap();
    assert_eq!(reads.load(Ordering::SeqCst), 1);
    assert_eq!(s.trainer.labels.names, vec!["neg", "pos"]);
    assert_eq!(s.base_model, cfg.model);
}
