//! The CPU backend compiled to wasm (the browser's fallback), in headless Chromium
//! (`cargo xtask test --wasm`): its SIMD128 matmul against an f64 reference, and a tiny BERT's
//! logits, loss and every trainable gradient against the PyTorch fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure
#![cfg(target_arch = "wasm32")]

mod common;
use common::rel_err;
use tunelab_candle::Candle;
use tunelab_core::Shape;
use tunelab_core::backend::{Backend, IGNORE_INDEX};
use tunelab_core::models::heads::Task;
use tunelab_core::models::task_model::TaskModel;
use tunelab_core::params::ParamStore;
use tunelab_core::peft::{Method, lora::LoraConfig};
use tunelab_core::safetensors_io::read;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn simd_matmul_matches_an_f64_reference() {
    tunelab_candle::sgemm::self_check().unwrap();
}

/// The PyTorch + PEFT parity fixtures' LoRA row, on the wasm CPU backend.
#[wasm_bindgen_test]
async fn a_tiny_bert_matches_pytorch_in_wasm() {
    const CONFIG: &str = include_str!("../../../tests/fixtures/tiny-bert/config.json");
    const WEIGHTS: &[u8] = include_bytes!("../../../tests/fixtures/tiny-bert/model.safetensors");
    const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/parity-bert-lora.safetensors");
    let be = Candle::cpu();
    let (fx, _) = read("fixture", FIXTURE).unwrap();
    let ints = tunelab_core::safetensors_io::read_ints("fixture", FIXTURE).unwrap();
    let (tensors, _) = read("model.safetensors", WEIGHTS).unwrap();
    let method = Method::Lora(LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["query".into(), "value".into()],
    });
    let task = Task::SequenceClassification { num_labels: 3 };
    let mut store = ParamStore::new();
    let model = TaskModel::load(
        &be,
        "tiny-bert",
        CONFIG,
        tensors,
        task,
        &method,
        0,
        &mut store,
    )
    .unwrap();
    for (name, t) in &fx {
        if let Some(param) = name.strip_prefix("init.") {
            let id = store.id(param).unwrap();
            store.set_value(id, be.upload(&t.data, &t.shape).unwrap());
        }
    }
    let ids: Vec<u32> = ints["input_ids"].iter().map(|&x| x as u32).collect();
    let mask: Vec<f32> = ints["attention_mask"].iter().map(|&x| x as f32).collect();
    let labels: Vec<u32> = ints["labels"]
        .iter()
        .map(|&x| if x < 0 { IGNORE_INDEX } else { x as u32 })
        .collect();
    let bsz = fx["logits"].shape.dims()[0];
    let input = model
        .input(&be, &store, &ids, &mask, bsz, ids.len() / bsz)
        .unwrap();
    let labels_t = be.upload_u32(&labels, &Shape::new([labels.len()])).unwrap();
    let scale = 1.0 / labels.len() as f32;

    let f = model
        .forward(&be, &store, &input, Some((&labels_t, scale)), true)
        .unwrap();
    let (mut tape, bound, logits, loss) = (f.tape, f.bound, f.logits, f.loss.unwrap());
    let got = be.download(tape.value(logits).unwrap()).await.unwrap();
    let diff = got
        .iter()
        .zip(&fx["logits"].data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, nan_max);
    assert!(diff < 1e-4, "logits max abs diff {diff}");
    let l = be.download(tape.value(loss).unwrap()).await.unwrap()[0];
    assert!((l - fx["loss"].data[0]).abs() < 1e-5, "loss {l}");
    tape.backward(loss).unwrap();
    let grads = store.grads(&mut tape, &bound);
    let mut checked = 0;
    for (id, g) in &grads {
        let name = &store.get(*id).name;
        let g = be.download(g.as_ref().unwrap()).await.unwrap();
        let want = &fx[&format!("grad.{name}")].data;
        let e = rel_err(&g, want);
        assert!(e < 1e-3, "gradient of {name}: relative error {e}");
        checked += 1;
    }
    let expected = fx.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        checked, expected,
        "every trainable tensor PyTorch has gets a gradient"
    );
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
