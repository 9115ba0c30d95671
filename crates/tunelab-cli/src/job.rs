//! Reading a job's files for the core: the model folder (an assets id or a path), the data
//! files of a preset or the user's, and an export folder; plus the devices `--device` names.
//! The set-up itself is the core's (`tunelab_core::session`).

use anyhow::{Context as _, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tunelab_candle::{Candle, DeviceKind};
use tunelab_core::backend::Backend;
use tunelab_core::data::{self, Format, Parsed};
use tunelab_core::peft::ExportKind;
use tunelab_core::preflight::{self, MemoryBudget};
use tunelab_core::safetensors_io::{self, LoadError};
use tunelab_core::session::{self, DataText, ModelFiles, RunInputs, Session, Weights};
pub use tunelab_core::session::{Loaded, feature_kind, masking};
use tunelab_core::trainer::{TrainConfig, resolve_task};
use tunelab_core::{Manifest, ModelCard};
use tunelab_core::{export, tokenizer};

/// The candle backend for `--device cpu | cuda | cuda:N`.
pub fn backend(device: &str) -> anyhow::Result<Candle> {
    Ok(Candle::new(candle_device(device)?))
}

/// The candle device `--device cpu | cuda | cuda:N` names.
pub fn candle_device(device: &str) -> anyhow::Result<candle_core::Device> {
    let kind: DeviceKind = device.parse()?;
    Ok(tunelab_candle::device(kind)?)
}

/// The WebGPU backend (`--device wgpu`): Vulkan, Metal or DX12; `WGPU_BACKEND` narrows it.
/// `TUNELAB_WGPU_MAX_BINDING_MIB` binds at most that many MiB per storage binding (below the
/// adapter's limit), so that tensors larger than it are processed in parts — to check those
/// paths at full size, or to work around a driver that mishandles large bindings.
/// `TUNELAB_WGPU_FLUSH_EVERY` sets the dispatches per submission (0: submit only at readbacks
/// and the trainer's flushes, i.e. once per half step).
pub fn wgpu_backend() -> anyhow::Result<tunelab_wgpu::Wgpu> {
    const VAR: &str = "TUNELAB_WGPU_MAX_BINDING_MIB";
    let max_binding = match env_number(VAR, "a whole number of MiB above 0")? {
        Some(0) => bail!("{VAR}=0: expected a whole number of MiB above 0"),
        m => m.map(|m| m << 20),
    };
    const FLUSH: &str = "TUNELAB_WGPU_FLUSH_EVERY";
    let flush_every = env_number(FLUSH, "a whole number of dispatches")?;
    let options = tunelab_wgpu::ContextOptions {
        max_binding,
        ..Default::default()
    };
    let ctx = pollster::block_on(tunelab_wgpu::Context::new(options))?;
    let r = ctx.report();
    eprintln!("wgpu: {} ({}, {})", r.name, r.backend, r.device_type);
    if max_binding.is_some() {
        eprintln!(
            "wgpu: bindings capped at {} MiB ({VAR})",
            ctx.binding_limit() >> 20
        );
    }
    let be = tunelab_wgpu::Wgpu::new(std::sync::Arc::new(ctx));
    Ok(match flush_every {
        Some(n) => {
            eprintln!("wgpu: {n} dispatches per submission ({FLUSH})");
            be.with_flush_every(n as usize)
        }
        None => be,
    })
}

/// A whole number from environment variable `var` (None when unset).
fn env_number(var: &str, expected: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(Some)
            .with_context(|| format!("{var}={v:?}: expected {expected}")),
        Err(_) => Ok(None),
    }
}

/// The assets manifest, if the folder has one (checksums verified).
pub fn manifest(assets: &Path) -> anyhow::Result<Manifest> {
    Manifest::verify_dir(assets)
        .with_context(|| format!("checking the assets in {}", assets.display()))
}

/// A model folder: an assets id or a path.
pub fn model_dir(assets: &Path, model: &str) -> anyhow::Result<PathBuf> {
    let as_path = PathBuf::from(model);
    if as_path.join("config.json").is_file() {
        return Ok(as_path);
    }
    let m = manifest(assets)?;
    let card: &ModelCard = m.model(model).with_context(|| {
        format!(
            "model `{model}` is neither a folder with config.json nor a model in {} (it has: {})",
            assets.display(),
            m.models
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    Ok(assets.join(&card.dir))
}

/// A text file (data, configs): UTF-8, a byte-order mark dropped; other bytes are an error
/// naming the line.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(data::decode_text(&path.display().to_string(), &bytes)?)
}

/// A checkpoint's weight files: `model.safetensors`, or the index and the shards it names.
/// Errors name the file.
pub fn read_weights(dir: &Path) -> Result<Weights, LoadError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| LoadError::Config {
            file: p.display().to_string(),
            reason: format!("cannot read it: {e}"),
        })
    };
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(Weights::Single(read(&single)?));
    }
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let index = read(&index_path)?;
        let mut shards = BTreeMap::new();
        for f in
            safetensors_io::weight_map(&index_path.display().to_string(), &index)?.into_values()
        {
            if let std::collections::btree_map::Entry::Vacant(e) = shards.entry(f) {
                let bytes = read(&dir.join(e.key()))?;
                e.insert(bytes);
            }
        }
        return Ok(Weights::Sharded { index, shards });
    }
    Err(LoadError::Config {
        file: dir.display().to_string(),
        reason: "has neither model.safetensors nor model.safetensors.index.json".into(),
    })
}

/// Where a run's data comes from.
#[derive(Debug, Clone)]
pub struct DataFiles {
    pub train: PathBuf,
    pub validation: Option<PathBuf>,
    pub test: Option<PathBuf>,
    /// Fixed label order from the dataset card, if any.
    pub labels: Option<Vec<String>>,
}

/// A file's format: `--format`, or its extension.
pub fn format_of(p: &Path, cfg: &TrainConfig) -> anyhow::Result<Format> {
    cfg.format
        .or_else(|| Format::from_path(&p.display().to_string()))
        .with_context(|| {
            format!(
                "cannot tell the format of {} from its extension; give --format jsonl|csv|conll|text",
                p.display()
            )
        })
}

pub fn data_files(cfg: &TrainConfig, assets: &Path) -> anyhow::Result<DataFiles> {
    let (_, preset) = resolve_task(&cfg.task).map_err(anyhow::Error::msg)?;
    let fmt = |p: &Path| format_of(p, cfg);
    if let Some(train) = &cfg.train_file {
        let train = PathBuf::from(train);
        fmt(&train)?;
        return Ok(DataFiles {
            validation: cfg.validation_file.as_ref().map(PathBuf::from),
            test: None,
            labels: cfg.labels.clone(),
            train,
        });
    }
    let Some(id) = preset else {
        bail!(
            "task `{}` needs --train-file (or use a preset: sentiment, topic, spam, ner, mlm)",
            cfg.task
        );
    };
    let m = manifest(assets)?;
    let card = m.dataset(id).with_context(|| {
        format!(
            "dataset `{id}` is not in {}; run `cargo xtask assets`",
            assets.display()
        )
    })?;
    let split = |s: &str| card.splits.get(s).map(|f| assets.join(&f.path));
    let train = split("train").with_context(|| format!("dataset `{id}` has no train split"))?;
    fmt(&train)?;
    Ok(DataFiles {
        validation: cfg
            .validation_file
            .as_ref()
            .map(PathBuf::from)
            .or_else(|| split("validation")),
        test: split("test"),
        labels: cfg
            .labels
            .clone()
            .or_else(|| (!card.labels.is_empty()).then(|| card.labels.clone())),
        train,
    })
}

/// Parses a data file; bad rows are errors, or skipped and counted with `skip_bad`.
pub fn read_split(path: &Path, cfg: &TrainConfig) -> anyhow::Result<Parsed> {
    let format = format_of(path, cfg)?;
    let text = read_text(path)?;
    let parsed = data::parse(&path.display().to_string(), &text, format, &cfg.columns)?;
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    if !parsed.skipped.is_empty() {
        eprintln!(
            "warning: skipped {} bad row(s) of {}; the first: {}",
            parsed.skipped.len(),
            path.display(),
            parsed.skipped[0]
        );
    }
    Ok(parsed)
}

/// A run set up from files: the core's session, and where its files came from.
pub struct Job<B: Backend> {
    pub session: Session<B>,
    pub files: DataFiles,
    /// The model's `tokenizer.json` (made from `vocab.json` and `merges.txt` where the
    /// folder has those instead), copied into exports.
    pub tokenizer_json: Vec<u8>,
}

/// The machine's memory budget for a job (`TUNELAB_MEMORY_AVAILABLE_MIB`, or Linux's
/// `MemAvailable`); `on_host`: the step runs in host memory (the CPU device).
pub fn memory_budget(on_host: bool) -> anyhow::Result<Option<MemoryBudget>> {
    const BUDGET: &str = "TUNELAB_MEMORY_AVAILABLE_MIB";
    let available = env_number(BUDGET, "a whole number of MiB")?
        .map(|m| m.saturating_mul(1 << 20))
        .or_else(|| {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| preflight::mem_available(&t))
        });
    Ok(available.map(|available| MemoryBudget { available, on_host }))
}

/// A data file as the core reads it.
pub fn data_text(path: &Path) -> anyhow::Result<DataText> {
    Ok(DataText {
        name: path.display().to_string(),
        text: read_text(path)?,
    })
}

/// Reads the model's files and the data for `cfg` and sets the run up (the method's
/// prompt-init text, if any, is tokenised into the trainer's config).
pub fn prepare<B: Backend>(
    cfg: &TrainConfig,
    assets: &Path,
    backend: B,
    prompt_text: Option<&str>,
) -> anyhow::Result<Job<B>> {
    cfg.validate()?;
    resolve_task(&cfg.task).map_err(anyhow::Error::msg)?;
    if cfg.from_scratch.is_some() && !matches!(cfg.method, tunelab_core::peft::Method::Full(_)) {
        bail!("--from-scratch trains every weight: use --method full");
    }
    let dir = model_dir(assets, &cfg.model)?;
    let model = model_files(&dir)?;
    let files = data_files(cfg, assets)?;
    let train = data_text(&files.train)?;
    let validation = files.validation.as_deref().map(data_text).transpose()?;
    let inputs = RunInputs {
        validation: validation.as_ref(),
        labels: files.labels.as_deref(),
        prompt_init_text: prompt_text,
        memory: memory_budget(backend.name() == "candle-cpu")?,
        ..RunInputs::new(&model, &train)
    };
    let session = session::prepare(backend, cfg, inputs)?;
    for w in &session.warnings {
        eprintln!("warning: {w}");
    }
    Ok(Job {
        session,
        files,
        tokenizer_json: model.tokenizer_json,
    })
}

/// A model folder's config and tokenizer; its weights are read from disk only when the
/// set-up needs them (after its checks, and never for a from-scratch run).
pub fn model_files(dir: &Path) -> anyhow::Result<ModelFiles> {
    let weights_dir = dir.to_path_buf();
    Ok(ModelFiles {
        name: dir.display().to_string(),
        config_json: read_text(&dir.join("config.json"))?,
        weights: Weights::Deferred(std::sync::Arc::new(move || read_weights(&weights_dir))),
        tokenizer_json: tokenizer_json(dir)?,
    })
}

/// The folder's `tokenizer.json`, or one made from GPT-2's `vocab.json` and `merges.txt`
/// (byte-level BPE) where it has those instead.
fn tokenizer_json(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let tokenizer = dir.join("tokenizer.json");
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if !tokenizer.exists() && vocab.is_file() && merges.is_file() {
        let json = tokenizer::byte_level_bpe_json(
            &vocab.display().to_string(),
            &read_text(&vocab)?,
            &merges.display().to_string(),
            &read_text(&merges)?,
        )?;
        return Ok(json.into_bytes());
    }
    std::fs::read(&tokenizer).with_context(|| {
        format!(
            "reading {} (a model folder has `tokenizer.json`, or `vocab.json` and `merges.txt`)",
            tokenizer.display()
        )
    })
}

/// Reads an export (ours, or a PEFT adapter folder) and rebuilds the model on its base: the
/// assets model or folder its manifest names, or — for a full fine-tune — the export itself.
pub fn load_export<B: Backend>(dir: &Path, assets: &Path, backend: B) -> anyhow::Result<Loaded<B>> {
    let mut files = BTreeMap::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".json") || name.ends_with(".safetensors") {
            files.insert(name, std::fs::read(e.path())?);
        }
    }
    let imported =
        export::import(&files).with_context(|| format!("importing {}", dir.display()))?;
    let m = &imported.manifest;
    let base_dir = if m.method.export_kind() == ExportKind::Model {
        dir.to_path_buf()
    } else {
        model_dir(assets, &m.base_model).with_context(|| {
            format!(
                "finding the base model `{}` of {}",
                m.base_model,
                dir.display()
            )
        })?
    };
    let mut base = model_files(&base_dir)?;
    if let Some(own) = files.remove("tokenizer.json") {
        base.tokenizer_json = own;
    }
    Ok(session::load_trained(
        backend,
        &imported,
        &base,
        &dir.display().to_string(),
    )?)
}
