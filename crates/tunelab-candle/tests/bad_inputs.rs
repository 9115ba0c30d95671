//! Bad model inputs give typed errors naming the file, tensor or option — never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::collections::BTreeMap;
use std::path::PathBuf;
use tunelab_candle::Candle;
use tunelab_core::Shape;
use tunelab_core::models::heads::Task;
use tunelab_core::models::task_model::{ModelError, TaskModel};
use tunelab_core::params::ParamStore;
use tunelab_core::peft::{Method, PeftError, lora::LoraConfig};
use tunelab_core::safetensors_io::LoadError;
use tunelab_core::safetensors_io::{self, HostTensor};

fn tiny() -> (String, Vec<u8>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-bert");
    (
        std::fs::read_to_string(dir.join("config.json")).unwrap(),
        std::fs::read(dir.join("model.safetensors")).unwrap(),
    )
}

fn load(config: &str, weights: &[u8], method: &Method) -> Result<TaskModel<Candle>, ModelError> {
    let mut store = ParamStore::new();
    let (tensors, _) = safetensors_io::read("tiny/model.safetensors", weights)?;
    TaskModel::load(
        &Candle::cpu(),
        "tiny",
        config,
        tensors,
        Task::SequenceClassification { num_labels: 3 },
        method,
        0,
        &mut store,
    )
}

/// Rewrites the checkpoint with `edit` applied to its tensors.
fn rewrite(weights: &[u8], edit: impl Fn(&mut BTreeMap<String, HostTensor>)) -> Vec<u8> {
    let (mut tensors, _) = safetensors_io::read("w", weights).unwrap();
    edit(&mut tensors);
    safetensors_io::write("w", &tensors, None).unwrap()
}

#[test]
fn missing_tensor_is_named() {
    let (config, weights) = tiny();
    let w = rewrite(&weights, |t| {
        t.remove("bert.encoder.layer.1.output.dense.weight");
    });
    let err = load(&config, &w, &Method::Full(Default::default())).unwrap_err();
    assert!(
        matches!(err, ModelError::Load(LoadError::Missing { .. })),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "tiny/model.safetensors: tensor `bert.encoder.layer.1.output.dense.weight` is missing (expected shape [16, 20])"
    );
}

#[test]
fn misshaped_tensor_is_named() {
    let (config, weights) = tiny();
    let w = rewrite(&weights, |t| {
        let b = t.get_mut("bert.embeddings.LayerNorm.bias").unwrap();
        b.shape = Shape::new([15]);
        b.data.truncate(15);
    });
    let err = load(&config, &w, &Method::Full(Default::default()))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "tiny/model.safetensors: tensor `bert.embeddings.LayerNorm.bias` has shape [15], expected [16]"
    );
}

#[test]
fn extra_tensor_is_named() {
    let (config, weights) = tiny();
    let w = rewrite(&weights, |t| {
        let extra = HostTensor {
            shape: Shape::new([2]),
            data: vec![0.0, 1.0],
        };
        t.insert("bert.encoder.layer.2.output.dense.weight".into(), extra);
    });
    let err = load(&config, &w, &Method::Full(Default::default()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected tensor(s) [\"bert.encoder.layer.2.output.dense.weight\"]"),
        "{err}"
    );
}

#[test]
fn truncated_file_is_reported() {
    let (config, weights) = tiny();
    let err = load(
        &config,
        &weights[..weights.len() / 2],
        &Method::Full(Default::default()),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("tiny/model.safetensors: not a valid safetensors file"),
        "{err}"
    );
}

#[test]
fn unknown_model_type_is_reported() {
    let (config, weights) = tiny();
    let config = config.replace("\"model_type\": \"bert\"", "\"model_type\": \"t5\"");
    let err = load(&config, &weights, &Method::Full(Default::default()))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "tiny/config.json: model_type `t5` is not supported (expected `bert`, `roberta` or `gpt2`)"
    );
}

#[test]
fn lora_targets_that_match_nothing_are_reported() {
    let (config, weights) = tiny();
    let m = Method::Lora(LoraConfig {
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        ..Default::default()
    });
    let err = load(&config, &weights, &m).unwrap_err();
    assert!(
        matches!(err, ModelError::Peft(PeftError::NoTargets { .. })),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "LoRA target modules [\"q_proj\", \"v_proj\"] match no linear layer; layers look like `encoder.layer.0.attention.self.query`"
    );
}
