//! Exporting trained weights, and importing them again.
//!
//! Each method names its format ([`ExportKind`]):
//!
//! | format | methods | files | loads in Python with |
//! |---|---|---|---|
//! | PEFT adapter | LoRA, IA3, prompt tuning | `adapter_config.json`, `adapter_model.safetensors` | `PeftModel.from_pretrained(base, dir)` |
//! | tensors | BitFit | `bitfit.safetensors` (changed tensors, Hugging Face names) | `model.load_state_dict(..., strict=False)` |
//! | model | full | `config.json`, `model.safetensors` | `AutoModelFor...from_pretrained(dir)` |
//!
//! Every export also has `tunelab_export.json` (method, task, labels, base model), which
//! Tunelab reads back; PEFT adapters made elsewhere import without it.
//!
//! PEFT's key names ([`PeftKeys`]): a tuner's weights are
//! `base_model.model.<bert|roberta>.<module>.lora_A.weight` (`.ia3_l`) and the head
//! (`modules_to_save`) `base_model.model.<head>`; prompt tuning saves `prompt_embeddings` and
//! the head as `base_model.<head>`.

use crate::backend::Backend;
use crate::data::Labels;
use crate::models::task_model::TaskModel;
use crate::params::ParamStore;
use crate::peft::{ExportKind, Method, ModelDims, PeftKeys};
use crate::safetensors_io::{self, HostTensor};
use crate::trainer::TaskKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MANIFEST: &str = "tunelab_export.json";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const BITFIT_WEIGHTS: &str = "bitfit.safetensors";

/// Problems exporting or importing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExportError {
    #[error("{file}: {reason}")]
    Invalid { file: String, reason: String },
    #[error("{file} is missing: an export has `{MANIFEST}` or `{ADAPTER_CONFIG}`")]
    Missing { file: String },
    #[error(transparent)]
    Backend(#[from] crate::BackendError),
}

fn invalid(file: &str, reason: impl Into<String>) -> ExportError {
    ExportError::Invalid {
        file: file.into(),
        reason: reason.into(),
    }
}

/// What Tunelab needs to rebuild a trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportManifest {
    pub format: u32,
    pub method: Method,
    pub task: TaskKind,
    pub labels: Labels,
    /// The model the weights apply to: an assets id or a folder (for full fine-tuning, the
    /// export itself is the model).
    pub base_model: String,
    /// `bert` or `roberta`.
    pub model_type: String,
    pub max_len: usize,
    pub files: Vec<String>,
}

/// What the caller knows about the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportInfo {
    pub task: TaskKind,
    pub labels: Labels,
    pub base_model: String,
    pub max_len: usize,
    /// The base model's `config.json` (patched into the full export's config).
    pub base_config_json: String,
}

fn model_type<B: Backend>(model: &TaskModel<B>) -> &str {
    model.config.model_type()
}

fn peft_task_type(task: TaskKind) -> serde_json::Value {
    match task {
        TaskKind::Classification => "SEQ_CLS".into(),
        TaskKind::TokenClassification => "TOKEN_CLS".into(),
        TaskKind::MaskedLm => serde_json::Value::Null,
        TaskKind::CausalLm => "CAUSAL_LM".into(),
    }
}

/// Head modules (top-level names) for PEFT's `modules_to_save`.
fn head_modules<B: Backend>(model: &TaskModel<B>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in model.head.param_names() {
        let top = n.split('.').next().unwrap_or(&n).to_string();
        if !out.contains(&top) {
            out.push(top);
        }
    }
    out
}

/// The exported files as `(name, bytes)`.
pub async fn export<B: Backend>(
    backend: &B,
    model: &TaskModel<B>,
    store: &ParamStore<B>,
    info: &ExportInfo,
) -> Result<Vec<(String, Vec<u8>)>, ExportError> {
    // The method as the model applied it (its targets the family's defaults).
    let method = &model.method;
    let mt = model_type(model);
    let prefix = model.config.checkpoint_prefix();
    let head: Vec<String> = model.head.param_names();
    let is_head = |n: &str| head.iter().any(|h| h == n);
    let mut tensors = BTreeMap::new();
    let host = |name: &str| -> Result<_, ExportError> {
        let id = store
            .id(name)
            .map_err(|e| invalid("export", e.to_string()))?;
        Ok(store.get(id).value.clone())
    };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let kind = method.export_kind();
    let selected: Vec<String> = match kind {
        ExportKind::Model => store.iter().map(|(_, p)| p.name.clone()).collect(),
        _ => store
            .iter()
            .filter(|(_, p)| p.trainable)
            .map(|(_, p)| p.name.clone())
            .collect(),
    };
    for name in &selected {
        let t = host(name)?;
        let data = backend.download(&t).await?;
        if crate::trainer::step::first_non_finite([(name.as_str(), data.as_slice())]).is_some() {
            return Err(invalid(
                "export",
                format!("`{name}` is not finite: a diverged model is not exported"),
            ));
        }
        let key = match kind {
            ExportKind::Peft {
                keys: PeftKeys::Tuner,
                ..
            } if is_head(name) => format!("base_model.model.{name}"),
            ExportKind::Peft {
                keys: PeftKeys::Tuner,
                ..
            } => format!("base_model.model.{prefix}.{name}"),
            ExportKind::Peft {
                keys: PeftKeys::Prompt,
                ..
            } if is_head(name) => format!("base_model.{name}"),
            ExportKind::Peft {
                keys: PeftKeys::Prompt,
                ..
            } => name.clone(),
            ExportKind::Tensors { .. } | ExportKind::Model if is_head(name) => name.clone(),
            ExportKind::Tensors { .. } | ExportKind::Model => format!("{prefix}.{name}"),
        };
        let host = HostTensor {
            shape: backend.shape(&t),
            data,
        };
        // Checkpoint layout (GPT-2's `Conv1D` weights are `(in, out)`); adapters keep
        // PEFT's own shapes.
        let host = match kind {
            ExportKind::Model | ExportKind::Tensors { .. } => {
                model.config.export_tensor(name, host)
            }
            ExportKind::Peft { .. } => host,
        };
        tensors.insert(key, host);
    }
    let json = |v: &serde_json::Value| -> Result<Vec<u8>, ExportError> {
        serde_json::to_vec_pretty(v).map_err(|e| invalid("export", e.to_string()))
    };
    let weights = |file: &str, t: &BTreeMap<String, HostTensor>| {
        safetensors_io::write(file, t, None).map_err(|e| invalid(file, e.to_string()))
    };
    match kind {
        ExportKind::Peft { peft_type, .. } => {
            let c = model.config.dims();
            let dims = ModelDims {
                hidden_size: c.hidden_size,
                num_attention_heads: c.num_attention_heads,
                num_hidden_layers: c.num_hidden_layers,
            };
            let mut config = serde_json::Map::new();
            config.insert("peft_type".into(), peft_type.into());
            config.insert("task_type".into(), peft_task_type(info.task));
            config.insert(
                "base_model_name_or_path".into(),
                info.base_model.clone().into(),
            );
            config.extend(method.peft_config(&dims));
            if matches!(
                kind,
                ExportKind::Peft {
                    keys: PeftKeys::Tuner,
                    ..
                }
            ) && model.config.fan_in_fan_out()
            {
                config.insert("fan_in_fan_out".into(), true.into());
            }
            config.insert("modules_to_save".into(), head_modules(model).into());
            config.insert("inference_mode".into(), true.into());
            files.push((ADAPTER_CONFIG.into(), json(&config.into())?));
            files.push((ADAPTER_WEIGHTS.into(), weights(ADAPTER_WEIGHTS, &tensors)?));
        }
        ExportKind::Tensors { file } => files.push((file.into(), weights(file, &tensors)?)),
        ExportKind::Model => {
            let mut config: serde_json::Value = serde_json::from_str(&info.base_config_json)
                .map_err(|e| invalid("config.json", e.to_string()))?;
            let arch = model.config.class_name(model.head.task);
            if let Some(obj) = config.as_object_mut() {
                obj.insert("architectures".into(), serde_json::json!([arch]));
                if !info.task.is_language_modelling() {
                    let id2label: serde_json::Map<String, serde_json::Value> = info
                        .labels
                        .names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (i.to_string(), n.clone().into()))
                        .collect();
                    let label2id: serde_json::Map<String, serde_json::Value> = info
                        .labels
                        .names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (n.clone(), i.into()))
                        .collect();
                    obj.insert("id2label".into(), id2label.into());
                    obj.insert("label2id".into(), label2id.into());
                }
            }
            files.push(("config.json".into(), json(&config)?));
            files.push((
                "model.safetensors".into(),
                weights("model.safetensors", &tensors)?,
            ));
        }
    }
    let manifest = ExportManifest {
        format: 1,
        method: method.clone(),
        task: info.task,
        labels: info.labels.clone(),
        base_model: info.base_model.clone(),
        model_type: mt.into(),
        max_len: info.max_len,
        files: files.iter().map(|(n, _)| n.clone()).collect(),
    };
    let m = serde_json::to_value(&manifest).map_err(|e| invalid(MANIFEST, e.to_string()))?;
    files.push((MANIFEST.into(), json(&m)?));
    Ok(files)
}

/// An export read back: how to rebuild the model, and the weights by parameter name.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub manifest: ExportManifest,
    /// Store names (`encoder.layer.0.attention.self.query.lora_A.weight`, `classifier.weight`).
    pub tensors: BTreeMap<String, HostTensor>,
}

fn peft_manifest(
    cfg: &serde_json::Value,
    tensors: &BTreeMap<String, HostTensor>,
) -> Result<ExportManifest, ExportError> {
    let file = ADAPTER_CONFIG;
    let s = |k: &str| cfg.get(k).and_then(|v| v.as_str());
    let peft_type = s("peft_type").unwrap_or("");
    let method = match Method::from_peft(peft_type, cfg) {
        Some(Ok(m)) => m,
        Some(Err(reason)) => return Err(invalid(file, reason)),
        None => {
            let known: Vec<&str> = crate::peft::REGISTRY
                .iter()
                .filter_map(|i| match Method::named(i.name)?.export_kind() {
                    ExportKind::Peft { peft_type, .. } => Some(peft_type),
                    _ => None,
                })
                .collect();
            return Err(invalid(
                file,
                format!(
                    "peft_type {:?} is not supported (expected one of {})",
                    s("peft_type"),
                    known.join(", ")
                ),
            ));
        }
    };
    let task = match s("task_type") {
        Some("SEQ_CLS") => TaskKind::Classification,
        Some("TOKEN_CLS") => TaskKind::TokenClassification,
        Some("CAUSAL_LM") => TaskKind::CausalLm,
        None => TaskKind::MaskedLm,
        Some(other) => {
            return Err(invalid(
                file,
                format!(
                    "task_type `{other}` is not supported (expected SEQ_CLS, TOKEN_CLS or CAUSAL_LM)"
                ),
            ));
        }
    };
    // Without Tunelab's manifest the label names are unknown: LABEL_i, as transformers names
    // them, from the classifier's output size.
    let classes = tensors
        .iter()
        .filter(|(k, _)| k.starts_with("classifier.") && k.ends_with("weight"))
        .map(|(_, t)| t.shape.dims()[0])
        .min()
        .unwrap_or(0);
    Ok(ExportManifest {
        format: 1,
        method,
        task,
        labels: Labels::new((0..classes).map(|i| format!("LABEL_{i}")).collect()),
        base_model: s("base_model_name_or_path").unwrap_or("").to_string(),
        model_type: String::new(),
        max_len: 128,
        files: vec![ADAPTER_CONFIG.into(), ADAPTER_WEIGHTS.into()],
    })
}

/// Reads an export from its files (name → bytes).
pub fn import(files: &BTreeMap<String, Vec<u8>>) -> Result<Imported, ExportError> {
    let parse_json = |name: &str| -> Result<Option<serde_json::Value>, ExportError> {
        files
            .get(name)
            .map(|b| serde_json::from_slice(b).map_err(|e| invalid(name, e.to_string())))
            .transpose()
    };
    let manifest: Option<ExportManifest> = parse_json(MANIFEST)?
        .map(|v| serde_json::from_value(v).map_err(|e| invalid(MANIFEST, e.to_string())))
        .transpose()?;
    let weights_file = match manifest.as_ref().map(|m| m.method.export_kind()) {
        Some(ExportKind::Tensors { file }) => file,
        Some(ExportKind::Model) => "model.safetensors",
        _ => ADAPTER_WEIGHTS,
    };
    let bytes = files
        .get(weights_file)
        .ok_or_else(|| ExportError::Missing {
            file: weights_file.into(),
        })?;
    let (raw, _) = safetensors_io::read(weights_file, bytes)
        .map_err(|e| invalid(weights_file, e.to_string()))?;
    // Weights that are NaN or infinite would predict nothing (or `null`): refuse them here.
    for (key, t) in &raw {
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(invalid(
                weights_file,
                format!(
                    "`{key}` holds {} at index {i}: the weights are not finite (the run that wrote them diverged)",
                    t.data[i]
                ),
            ));
        }
    }
    // Back to store names: every family's checkpoint prefix, under PEFT's or alone.
    let families = crate::models::ModelConfig::all_prefixes();
    let mut prefixes: Vec<String> = families
        .iter()
        .map(|f| format!("base_model.model.{f}."))
        .collect();
    prefixes.extend(["base_model.model.".into(), "base_model.".into()]);
    prefixes.extend(families.iter().map(|f| format!("{f}.")));
    let mut tensors = BTreeMap::new();
    for (key, t) in raw {
        let name = prefixes
            .iter()
            .find_map(|p| key.strip_prefix(p.as_str()))
            .unwrap_or(&key)
            .to_string();
        tensors.insert(name, t);
    }
    // A PEFT adapter's config is read even beside Tunelab's manifest: it is what PEFT loads,
    // so it must be valid and say the same.
    let peft = parse_json(ADAPTER_CONFIG)?
        .map(|cfg| peft_manifest(&cfg, &tensors))
        .transpose()?;
    let manifest = match (manifest, peft) {
        (Some(m), Some(p)) => {
            let same = m.method.as_peft().as_ref() == Some(&p.method);
            if !same || m.task != p.task {
                return Err(invalid(
                    ADAPTER_CONFIG,
                    format!(
                        "describes {} for {:?}, but {MANIFEST} says {} for {:?}",
                        p.method.describe(),
                        p.task,
                        m.method.describe(),
                        m.task
                    ),
                ));
            }
            m
        }
        (Some(m), None) if matches!(m.method.export_kind(), ExportKind::Peft { .. }) => {
            return Err(ExportError::Missing {
                file: ADAPTER_CONFIG.into(),
            });
        }
        (Some(m), None) => m,
        (None, Some(p)) => p,
        (None, None) => {
            return Err(ExportError::Missing {
                file: ADAPTER_CONFIG.into(),
            });
        }
    };
    Ok(Imported { manifest, tensors })
}

/// Puts imported weights into a model built with the export's method; every tensor must
/// name a parameter of the same shape, and every trainable parameter of the model must be
/// there. Nothing changes unless all of them fit.
pub fn apply<B: Backend>(
    backend: &B,
    store: &mut ParamStore<B>,
    tensors: &BTreeMap<String, HostTensor>,
    file: &str,
) -> Result<usize, ExportError> {
    for id in store.trainable() {
        let name = &store.get(id).name;
        if !tensors.contains_key(name) {
            return Err(invalid(
                file,
                format!("`{name}` is missing: the method trains it, so the export must hold it"),
            ));
        }
    }
    let mut updates = Vec::new();
    for (name, t) in tensors {
        let id = store
            .id(name)
            .map_err(|_| invalid(file, format!("`{name}` is not a parameter of this model")))?;
        let want = backend.shape(&store.get(id).value);
        if want != t.shape {
            return Err(invalid(
                file,
                format!("`{name}` has shape {} but the model needs {want}", t.shape),
            ));
        }
        updates.push((id, t));
    }
    for (id, t) in &updates {
        let v = backend.upload(&t.data, &t.shape)?;
        store.set_value(*id, v);
    }
    Ok(updates.len())
}
