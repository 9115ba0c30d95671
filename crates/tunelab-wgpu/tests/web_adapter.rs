//! Runs in headless Chromium (`cargo xtask test --wasm`): WebGPU through wgpu.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure
#![cfg(target_arch = "wasm32")]
// wgpu's context is not Send in wasm; the tests share it within their one thread.
#![allow(clippy::arc_with_non_send_sync)]

use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn wgpu_gets_a_webgpu_adapter_in_the_browser() {
    let ctx = tunelab_wgpu::Context::new(Default::default())
        .await
        .expect("WebGPU adapter (is Chromium started with --enable-unsafe-webgpu?)");
    let report = ctx.report();
    assert_eq!(report.backend, "BrowserWebGpu");
    assert!(!report.vendor.is_empty(), "{report:?}");
    // We ask for the adapter's real limits, not WebGPU's 128 MiB default.
    assert!(report.limits.max_storage_buffer_binding_size >= 128 << 20);
}

/// The shared conformance suite on the browser's WebGPU: every op forward and backward.
#[wasm_bindgen_test]
async fn the_browser_webgpu_backend_passes_the_conformance_suite() {
    let ctx = tunelab_wgpu::Context::new(Default::default())
        .await
        .unwrap();
    let be = tunelab_wgpu::Wgpu::new(std::sync::Arc::new(ctx));
    tunelab_conformance::run(&be).await;
}

#[wasm_bindgen_test]
async fn axpby_runs_on_webgpu() {
    let ctx = tunelab_wgpu::Context::new(Default::default())
        .await
        .unwrap();
    let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let y: Vec<f32> = (0..1000).map(|i| 1.0 - i as f32).collect();
    let got = tunelab_wgpu::ops::elementwise::axpby(&ctx, 2.0, &x, 3.0, &y)
        .await
        .unwrap();
    for i in 0..1000 {
        assert_eq!(got[i], 2.0 * x[i] + 3.0 * y[i], "i={i}");
    }
}

/// The engine on the browser's WebGPU against the candle backend compiled to wasm (CPU): a
/// tiny BERT with full fine-tuning, BitFit, LoRA and prompt tuning — logits, every trainable
/// gradient, and three training steps.
#[wasm_bindgen_test]
async fn a_tiny_bert_trains_on_webgpu_like_on_the_cpu() {
    use std::sync::Arc;
    use tunelab_core::Shape;
    use tunelab_core::backend::Backend;
    use tunelab_core::models::heads::Task;
    use tunelab_core::models::task_model::TaskModel;
    use tunelab_core::optim::{AdamWConfig, Optimizer, Schedule};
    use tunelab_core::params::ParamStore;
    use tunelab_core::peft::{Method, lora::LoraConfig, prompt::PromptConfig};

    const CONFIG: &str = include_str!("../../../tests/fixtures/tiny-bert/config.json");
    const WEIGHTS: &[u8] = include_bytes!("../../../tests/fixtures/tiny-bert/model.safetensors");

    async fn run<B: Backend>(be: &B, method: &Method) -> (Vec<f32>, Vec<Vec<f32>>, Vec<f32>) {
        let (tensors, _) = tunelab_core::safetensors_io::read("tiny", WEIGHTS).unwrap();
        let mut store = ParamStore::new();
        let task = Task::SequenceClassification { num_labels: 3 };
        let model = TaskModel::load(
            be,
            "tiny-bert",
            CONFIG,
            tensors,
            task,
            method,
            3,
            &mut store,
        )
        .unwrap();
        let ids: Vec<u32> = (0..12).map(|i| 5 + (i * 7) % 50).collect();
        let mask: Vec<f32> = (0..12).map(|i| if i >= 10 { 0.0 } else { 1.0 }).collect();
        let input = model.input(be, &store, &ids, &mask, 2, 6).unwrap();
        let labels = be.upload_u32(&[0, 2], &Shape::new([2])).unwrap();
        let f = model
            .forward(be, &store, &input, Some((&labels, 0.5)), true)
            .unwrap();
        let (mut tape, bound, logits, loss) = (f.tape, f.bound, f.logits, f.loss.unwrap());
        let lv = be.download(tape.value(logits).unwrap()).await.unwrap();
        tape.backward(loss).unwrap();
        let mut grads = Vec::new();
        for (_, g) in store.grads(&mut tape, &bound) {
            grads.push(be.download(&g.unwrap()).await.unwrap());
        }
        drop(tape);
        let mut opt = Optimizer::<B>::new(
            AdamWConfig {
                lr: 5e-3,
                ..Default::default()
            },
            Schedule::Constant { warmup: 0 },
        );
        let mut losses = Vec::new();
        for _ in 0..3 {
            let s = tunelab_core::trainer::step::step(
                be, &model, &mut store, &mut opt, &input, &labels, 0.5, 1.0,
            )
            .await
            .unwrap();
            losses.push(s.loss);
        }
        (lv, grads, losses)
    }

    let ctx = tunelab_wgpu::Context::new(Default::default())
        .await
        .unwrap();
    let wg = tunelab_wgpu::Wgpu::new(Arc::new(ctx));
    let methods = [
        Method::Full(Default::default()),
        Method::Bitfit(Default::default()),
        Method::Lora(LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["query".into(), "value".into()],
        }),
        Method::Prompt(PromptConfig {
            num_virtual_tokens: 3,
            init_token_ids: vec![],
        }),
    ];
    for method in &methods {
        let name = method.name();
        let (wl, wgr, wloss) = run(&wg, method).await;
        let (cl, cg, closs) = run(&tunelab_candle::Candle::cpu(), method).await;
        for (a, b) in cl.iter().zip(&wl) {
            assert!((a - b).abs() < 1e-4, "{name}: logits {cl:?} vs {wl:?}");
        }
        assert_eq!(cg.len(), wgr.len(), "{name}");
        for (a, b) in cg.iter().zip(&wgr) {
            let scale = a.iter().map(|x| x.abs()).fold(0f32, nan_max).max(1e-6);
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, nan_max);
            assert!(
                d / scale < 1e-3 || d < 1e-6,
                "{name}: gradient differs by {d} (scale {scale})"
            );
        }
        for (a, b) in closs.iter().zip(&wloss) {
            assert!(
                (a - b).abs() < 1e-3,
                "{name}: losses {closs:?} vs {wloss:?}"
            );
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
