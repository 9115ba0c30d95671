//! Setting a job up from a `TrainConfig`: the model folder, tokenizer, data files, features and
//! the model itself; and rebuilding a trained model from an export.

use anyhow::{Context as _, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tunelab_candle::{Candle, DeviceKind};
use tunelab_core::backend::Backend;
use tunelab_core::data::{self, Features, Format, Labels, Masking, Parsed};
use tunelab_core::export::{self, ExportManifest};
use tunelab_core::models::ModelConfig;
use tunelab_core::models::task_model::TaskModel;
use tunelab_core::params::ParamStore;
use tunelab_core::peft::Method;
use tunelab_core::safetensors_io::{self, HostTensor};
pub use tunelab_core::session::{feature_kind, head_task, masking};
use tunelab_core::tokenizer::Tokenizer;
use tunelab_core::trainer::{TaskKind, TrainConfig, resolve_task};
use tunelab_core::{Manifest, ModelCard, preflight};

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

/// A checkpoint's tensors (`model.safetensors`, or the shards of its index).
pub fn read_weights(dir: &Path) -> anyhow::Result<BTreeMap<String, HostTensor>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        let bytes =
            std::fs::read(&single).with_context(|| format!("reading {}", single.display()))?;
        return Ok(safetensors_io::read(&single.display().to_string(), &bytes)?.0);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read(&index).with_context(|| format!("reading {}", index.display()))?;
        return Ok(safetensors_io::read_sharded(
            &index.display().to_string(),
            &text,
            |f| {
                std::fs::read(dir.join(f)).map_err(|e| {
                    tunelab_core::safetensors_io::LoadError::Config {
                        file: dir.join(f).display().to_string(),
                        reason: e.to_string(),
                    }
                })
            },
        )?);
    }
    bail!(
        "{} has neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    )
}

pub fn tokenizer(dir: &Path, vocab: usize) -> anyhow::Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Tokenizer::from_json(
        &path.display().to_string(),
        &bytes,
        vocab,
    )?)
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

/// Everything a training run needs.
#[derive(Debug)]
pub struct Job<B: Backend> {
    pub backend: B,
    pub model: TaskModel<B>,
    pub store: ParamStore<B>,
    pub tokenizer: Tokenizer,
    pub tokenizer_json: PathBuf,
    pub kind: TaskKind,
    pub labels: Labels,
    pub train: Features,
    pub validation: Option<Features>,
    pub masking: Option<Masking>,
    /// The model's `config.json` (generated for from-scratch runs).
    pub config_json: String,
    pub base_model: String,
    pub files: DataFiles,
}

/// Builds the model, tokenizer and features for `cfg` (the method's prompt-init text, if any,
/// is tokenised into `cfg`).
pub fn prepare<B: Backend>(
    cfg: &mut TrainConfig,
    assets: &Path,
    backend: B,
    prompt_text: Option<&str>,
) -> anyhow::Result<Job<B>> {
    cfg.validate()?;
    let (kind, _) = resolve_task(&cfg.task).map_err(anyhow::Error::msg)?;
    if cfg.from_scratch.is_some() && cfg.method != Method::Full(Default::default()) {
        bail!("--from-scratch trains every weight: use --method full");
    }
    let (dir, base_cfg, tokenizer) = model_parts(assets, &cfg.model)?;
    if let (Some(text), Method::Prompt(p)) = (prompt_text, &mut cfg.method) {
        p.init_token_ids = tokenizer.encode_plain(text)?;
        if p.init_token_ids.is_empty() {
            bail!("--prompt-init-text gives no tokens");
        }
    }
    let files = data_files(cfg, assets)?;
    let train_rows = read_split(&files.train, cfg)?;
    let labels = match (&files.labels, kind) {
        (_, TaskKind::MaskedLm) => Labels::default(),
        (Some(l), _) => Labels::new(l.clone()),
        (None, _) => Labels::infer(&train_rows.examples),
    };
    if kind != TaskKind::MaskedLm && labels.len() < 2 {
        bail!(
            "{}: found {} label(s) {:?}; classification needs at least 2",
            files.train.display(),
            labels.len(),
            labels.names
        );
    }
    check_memory(
        cfg,
        kind,
        &labels,
        &base_cfg,
        &tokenizer,
        backend.name() == "candle-cpu",
    )?;
    let fk = feature_kind(kind);
    let train = data::encode(
        &tokenizer,
        &train_rows.examples,
        fk,
        &labels,
        cfg.max_len,
        &files.train.display().to_string(),
    )?;
    let validation = match &files.validation {
        Some(p) => {
            let rows = read_split(p, cfg)?;
            Some(data::encode(
                &tokenizer,
                &rows.examples,
                fk,
                &labels,
                cfg.max_len,
                &p.display().to_string(),
            )?)
        }
        None => None,
    };
    let all: Vec<&Features> = std::iter::once(&train).chain(validation.as_ref()).collect();
    tunelab_core::preflight::check_positions(&base_cfg, &cfg.method, &all)?;
    let built = build_model(cfg, kind, &labels, &dir, &base_cfg, &tokenizer, backend)?;
    let masking = masking(kind, &tokenizer, cfg.mlm_probability)?;
    Ok(Job {
        backend: built.backend,
        model: built.model,
        store: built.store,
        tokenizer,
        tokenizer_json: dir.join("tokenizer.json"),
        kind,
        labels,
        train,
        validation,
        masking,
        config_json: built.config_json,
        base_model: built.base_model,
        files,
    })
}

/// Refuses a job whose estimated memory exceeds what the machine has available (Linux's
/// `MemAvailable`), before anything large is allocated: the operating system would kill it
/// half-way otherwise. `on_host`: the step itself runs in host memory (the CPU device).
fn check_memory(
    cfg: &TrainConfig,
    kind: TaskKind,
    labels: &Labels,
    base_cfg: &ModelConfig,
    tokenizer: &Tokenizer,
    on_host: bool,
) -> anyhow::Result<()> {
    let model_cfg = match &cfg.from_scratch {
        Some(s) => ModelConfig::from_json(
            "from_scratch",
            &s.config_json(
                tokenizer.vocab_size().max(base_cfg.dims().vocab_size),
                tokenizer.pad_id(),
            ),
        )?,
        None => base_cfg.clone(),
    };
    let (trainable, total) = tunelab_core::models::task_model::count_params(
        &model_cfg,
        head_task(kind, labels),
        &cfg.method,
    )?;
    let need = preflight::host_estimate(
        &model_cfg,
        trainable,
        total,
        cfg.batch_size,
        cfg.max_len,
        on_host,
    );
    const BUDGET: &str = "TUNELAB_MEMORY_AVAILABLE_MIB";
    let available = env_number(BUDGET, "a whole number of MiB")?
        .map(|m| m.saturating_mul(1 << 20))
        .or_else(|| {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| preflight::mem_available(&t))
        });
    if let Some(available) = available
        && need > available
    {
        bail!(
            "this job needs about {} of memory ({} trainable of {} parameters, batch {} x {} tokens) but {} is available; nothing was started: lower --batch-size or --max-len, or use a smaller method (e.g. a lower --lora-r)",
            preflight::mib(need),
            trainable,
            total,
            cfg.batch_size,
            cfg.max_len,
            preflight::mib(available)
        );
    }
    Ok(())
}

/// A model as a config describes it, before training.
#[derive(Debug)]
pub struct Built<B: Backend> {
    pub backend: B,
    pub model: TaskModel<B>,
    pub store: ParamStore<B>,
    pub config_json: String,
    pub base_model: String,
}

/// Loads the pretrained model (or initialises the from-scratch one) with the task's head and
/// the method applied.
pub fn build_model<B: Backend>(
    cfg: &TrainConfig,
    kind: TaskKind,
    labels: &Labels,
    dir: &Path,
    base_cfg: &ModelConfig,
    tokenizer: &Tokenizer,
    backend: B,
) -> anyhow::Result<Built<B>> {
    let (config_json, tensors, base_model) = match &cfg.from_scratch {
        Some(s) => {
            let json = s.config_json(
                tokenizer.vocab_size().max(base_cfg.dims().vocab_size),
                tokenizer.pad_id(),
            );
            let c = ModelConfig::from_json("from_scratch", &json)?;
            let t = c.random_tensors(cfg.seed);
            (json, t, "scratch".to_string())
        }
        None => (
            read_text(&dir.join("config.json"))?,
            read_weights(dir)?,
            cfg.model.clone(),
        ),
    };
    let mut store = ParamStore::new();
    let model = TaskModel::load(
        &backend,
        &dir.display().to_string(),
        &config_json,
        tensors,
        head_task(kind, labels),
        &cfg.method,
        cfg.seed,
        &mut store,
    )?;
    Ok(Built {
        backend,
        model,
        store,
        config_json,
        base_model,
    })
}

/// The model folder, its parsed config and tokenizer.
pub fn model_parts(
    assets: &Path,
    model: &str,
) -> anyhow::Result<(PathBuf, ModelConfig, Tokenizer)> {
    let dir = model_dir(assets, model)?;
    let path = dir.join("config.json");
    let cfg = ModelConfig::from_json(&path.display().to_string(), &read_text(&path)?)?;
    let tok = tokenizer(&dir, cfg.dims().vocab_size)?;
    Ok((dir, cfg, tok))
}

/// A trained model rebuilt from an export folder.
#[derive(Debug)]
pub struct Loaded<B: Backend> {
    pub backend: B,
    pub model: TaskModel<B>,
    pub store: ParamStore<B>,
    pub tokenizer: Tokenizer,
    pub manifest: ExportManifest,
}

/// Reads an export (ours, or a PEFT adapter folder) and rebuilds the model on its base.
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
    let m = imported.manifest;
    let base_dir = if m.method == Method::Full(Default::default()) {
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
    let config_json = read_text(&base_dir.join("config.json"))?;
    let bc = ModelConfig::from_json(
        &base_dir.join("config.json").display().to_string(),
        &config_json,
    )?;
    let tok_dir = if dir.join("tokenizer.json").is_file() {
        dir
    } else {
        &base_dir
    };
    let tokenizer = tokenizer(tok_dir, bc.dims().vocab_size)?;
    let mut store = ParamStore::new();
    let model = TaskModel::load(
        &backend,
        &base_dir.display().to_string(),
        &config_json,
        read_weights(&base_dir)?,
        head_task(m.task, &m.labels),
        &m.method,
        0,
        &mut store,
    )?;
    if m.method != Method::Full(Default::default()) {
        export::apply(
            &backend,
            &mut store,
            &imported.tensors,
            &dir.display().to_string(),
        )?;
    }
    Ok(Loaded {
        backend,
        model,
        store,
        tokenizer,
        manifest: m,
    })
}

/// The names of the files an export writes (any method): a folder holding only these (and
/// Tunelab's manifest) is a previous export, which a new one may replace.
const EXPORT_FILES: &[&str] = &[
    export::MANIFEST,
    export::ADAPTER_CONFIG,
    export::ADAPTER_WEIGHTS,
    export::BITFIT_WEIGHTS,
    "config.json",
    "model.safetensors",
    "tokenizer.json",
];

/// Whether `dir` may be written as an export: it does not exist, is empty, or is a previous
/// export of ours (its manifest and nothing but export files). Anything else is refused by
/// name, so a user's folder (`--out .`, say) is never emptied.
pub fn check_export_dir(dir: &Path) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if dir.is_file() => bail!(
            "{} is a file, not a folder: give --out a folder to write the export into ({e})",
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        names.push((
            e.file_name().to_string_lossy().to_string(),
            e.path().is_file(),
        ));
    }
    if names.is_empty() {
        return Ok(());
    }
    let ours = names.iter().any(|(n, _)| n == export::MANIFEST);
    let foreign: Vec<&str> = names
        .iter()
        .filter(|(n, file)| !(*file && EXPORT_FILES.contains(&n.as_str())))
        .map(|(n, _)| n.as_str())
        .collect();
    if !ours || !foreign.is_empty() {
        let shown: Vec<&str> = if foreign.is_empty() {
            names.iter().map(|(n, _)| n.as_str()).take(5).collect()
        } else {
            foreign.into_iter().take(5).collect()
        };
        bail!(
            "{} is not empty and is not an earlier export of Tunelab (it holds {}); nothing was written: choose an empty or new folder",
            dir.display(),
            shown.join(", ")
        );
    }
    Ok(())
}

/// A sibling path of `dir` for staging (`.<name>.<what>-<pid>`).
fn sibling(dir: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let name = dir
        .file_name()
        .with_context(|| format!("{} does not name a folder", dir.display()))?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let staged = format!(".{}.{what}-{}", name.to_string_lossy(), std::process::id());
    Ok(parent.map_or_else(|| PathBuf::from(&staged), |p| p.join(&staged)))
}

/// Writes an export's files into `dir`: first into a sibling folder, which then takes the
/// place of `dir` by renames, so `dir` always holds a whole export (the old or the new one).
/// `dir` must pass [`check_export_dir`].
pub fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    // `--out .` or `--out ..` name no folder to rename: resolve them first.
    let dir = &if dir.file_name().is_none() && dir.exists() {
        dir.canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?
    } else {
        dir.to_path_buf()
    };
    check_export_dir(dir)?;
    let tmp = sibling(dir, "new")?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let staged = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for (name, bytes) in files {
            std::fs::write(tmp.join(name), bytes)
                .with_context(|| format!("writing {}", tmp.join(name).display()))?;
        }
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = sibling(dir, "old")?;
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()));
    }
    if had_old {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("removing the previous export {}", old.display()))?;
    }
    Ok(())
}

/// Writes a file atomically (temporary file, then rename).
pub fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
