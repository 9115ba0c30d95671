//! Model files and the run history: fetched once from the dev server, then kept in the origin's storage.

use crate::{Payload, post, status};
use js_sys::{Promise, Reflect};
use tunelab_candle::Candle;
use tunelab_core::models::ModelConfig;
use tunelab_core::models::task_model::TaskModel;
use tunelab_core::params::ParamStore;
use tunelab_core::peft::Method;
use tunelab_core::session::{ModelFiles, Weights};
use tunelab_web::protocol::{Event, ModelFacts, ModelSource, PastRun, SavedRun};
use tunelab_web::storage;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::run::*;
use tunelab_web::saved::{self};

pub(crate) const PAST: &str = "runs/history.json";

/// Runs kept in the history.
pub(crate) const PAST_MAX: usize = 50;

/// `url` (relative to the app's root) made absolute. A relative URL in a worker resolves
/// against the worker's script; the threaded worker's is in `threads/`, so its loader names
/// the app's root in `self.tunelabRoot`.
pub(crate) fn app_url(url: &str) -> String {
    Reflect::get(&js_sys::global(), &"tunelabRoot".into())
        .ok()
        .and_then(|root| root.as_string())
        .and_then(|root| web_sys::Url::new_with_base(url, &root).ok())
        .map_or_else(|| url.to_string(), |u| u.href())
}

pub(crate) async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
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

pub(crate) const MODEL_FILES: [&str; 3] = ["model.safetensors", "tokenizer.json", "config.json"];

/// The model's files from browser storage, or (built-in models) fetched and stored there.
/// Returns whether they came from storage.
pub(crate) async fn model_files(source: &ModelSource) -> Result<(ModelFiles, bool), String> {
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
            weights: Weights::Single(weights),
            tokenizer_json,
        },
        cached,
    ))
}

pub(crate) async fn saved_run() -> Option<SavedRun> {
    saved::load(&storage::Opfs).await
}

pub(crate) async fn past_runs() -> Vec<PastRun> {
    storage::read_text(PAST)
        .await
        .ok()
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

pub(crate) async fn record_run(r: &PastRun) -> Result<(), String> {
    let mut past = past_runs().await;
    past.push(r.clone());
    let drop_n = past.len().saturating_sub(PAST_MAX);
    past.drain(..drop_n);
    storage::write(PAST, serde_json::to_string(&past).map_err(s)?.as_bytes())
        .await
        .map_err(s)
}

pub(crate) async fn save_model(name: &str, files: Payload) -> Result<(), String> {
    ensure_idle()?;
    let get = |f: &str| {
        files
            .get(f)
            .cloned()
            .ok_or_else(|| format!("the model needs {f}; it was not among the files given"))
    };
    let weights = get("model.safetensors")?;
    let mut m = ModelFiles {
        name: name.to_string(),
        config_json: String::from_utf8(get("config.json")?)
            .map_err(|_| "config.json is not UTF-8 text".to_string())?,
        weights: Weights::Unread,
        tokenizer_json: get("tokenizer.json")?,
    };
    let (config, _) = m.parts().map_err(s)?;
    let (tensors, _) =
        tunelab_core::safetensors_io::read(&format!("{name}/model.safetensors"), &weights)
            .map_err(s)?;
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
        ("model.safetensors", &weights),
        ("tokenizer.json", &m.tokenizer_json),
        ("config.json", &m.config_json.as_bytes().to_vec()),
    ] {
        storage::write(&format!("{dir}/{f}"), bytes)
            .await
            .map_err(s)?;
    }
    m.weights = Weights::Single(weights);
    post(
        &Event::ModelSaved {
            facts: facts(name, &config, &m, parameters),
        },
        None,
    );
    Ok(())
}

/// The model's facts; `parameters` counts the checkpoint's tensors.
pub(crate) fn facts(name: &str, c: &ModelConfig, m: &ModelFiles, parameters: usize) -> ModelFacts {
    let d = c.dims();
    ModelFacts {
        name: name.to_string(),
        architecture: c.model_type().to_string(),
        layers: d.num_hidden_layers,
        hidden: d.hidden_size,
        heads: d.num_attention_heads,
        vocab: d.vocab_size,
        parameters,
        bytes: m.weights.len(),
        config_json: m.config_json.clone(),
    }
}
