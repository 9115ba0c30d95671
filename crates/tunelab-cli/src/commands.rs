//! `tunelab eval`, `predict` and `export`.

use crate::files_out;
use crate::job::{self, Loaded};
use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use tunelab_core::backend::Backend;
use tunelab_core::data::{self, Example, Format};
use tunelab_core::export::{self, ExportInfo};
use tunelab_core::generate;
use tunelab_core::predict::{self, Prediction};
use tunelab_core::session;
use tunelab_core::trainer::{
    self, EvalOptions, EvalReport, TrainConfig, Trainer, checkpoint, resolve_task,
};

/// The data an evaluation of `model_dir` uses: `--file`, or the preset's split (the task
/// comes from `--task` or the run's `train_config.json` next to the export).
fn eval_file(
    model_dir: &Path,
    assets: &Path,
    task: Option<&str>,
    file: Option<&Path>,
    split: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(f) = file {
        return Ok(f.to_path_buf());
    }
    let task = match task {
        Some(t) => t.to_string(),
        None => {
            let p = model_dir.join("../train_config.json");
            let text = std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "no --file given and no {} to find the task's dataset",
                    p.display()
                )
            })?;
            TrainConfig::parse(&p.display().to_string(), &text)?.task
        }
    };
    let (_, preset) = resolve_task(&task).map_err(anyhow::Error::msg)?;
    let id = preset.with_context(|| format!("task `{task}` has no sample dataset: give --file"))?;
    let m = job::manifest(assets)?;
    let card = m
        .dataset(id)
        .with_context(|| format!("dataset `{id}` is not installed"))?;
    let f = card
        .splits
        .get(split)
        .with_context(|| format!("dataset `{id}` has no `{split}` split"))?;
    Ok(assets.join(&f.path))
}

#[allow(clippy::too_many_arguments)]
pub fn eval<B: Backend>(
    model_dir: &Path,
    assets: &Path,
    backend: B,
    task: Option<&str>,
    file: Option<&Path>,
    split: &str,
    batch_size: usize,
    json: bool,
) -> anyhow::Result<EvalReport> {
    let Loaded {
        backend,
        model,
        store,
        tokenizer,
        manifest,
    } = job::load_export(model_dir, assets, backend)?;
    let path = eval_file(model_dir, assets, task, file, split)?;
    let fmt = Format::from_path(&path.display().to_string())
        .with_context(|| format!("cannot tell the format of {}", path.display()))?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    let parsed = data::parse(&name, &text, fmt, &Default::default())?;
    let features = data::encode(
        &tokenizer,
        &parsed.examples,
        job::feature_kind(manifest.task),
        &manifest.labels,
        manifest.max_len,
        &name,
    )?;
    let masking = job::masking(manifest.task, &tokenizer, 0.15)?;
    let report = pollster::block_on(trainer::evaluate(
        &backend,
        &model,
        &store,
        manifest.task,
        &manifest.labels,
        &features,
        EvalOptions {
            batch_size,
            pad_id: tokenizer.pad_id(),
            masking,
            max_examples: None,
        },
    ))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &name);
    }
    Ok(report)
}

fn print_report(r: &EvalReport, file: &str) {
    println!("{} examples from {file}", r.examples);
    for (k, v) in &r.metrics {
        println!("  {k:<16} {v:.4}");
    }
    if !r.per_class.is_empty() || !r.per_entity.is_empty() {
        println!(
            "\n  {:<18} {:>9} {:>9} {:>9} {:>8}",
            "", "precision", "recall", "f1", "support"
        );
        for (name, p) in r.per_class.iter().chain(&r.per_entity) {
            println!(
                "  {name:<18} {:>9.4} {:>9.4} {:>9.4} {:>8}",
                p.precision, p.recall, p.f1, p.support
            );
        }
    }
    if let Some(c) = &r.confusion {
        println!("\n  confusion matrix (rows: gold, columns: predicted)");
        print!("  {:<18}", "");
        for i in 0..c.labels.len() {
            print!(" {i:>6}");
        }
        println!();
        for (i, row) in c.counts.iter().enumerate() {
            print!("  {:<18}", format!("{i} {}", c.labels[i]));
            for n in row {
                print!(" {n:>6}");
            }
            println!();
        }
    }
}

/// Texts from `--text` flags and an input file (plain text: one per line; JSONL: `text`).
fn inputs(texts: &[String], input: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let mut out = texts.to_vec();
    if let Some(p) = input {
        let name = p.display().to_string();
        let text = job::read_text(p)?;
        let fmt = Format::from_path(&name).unwrap_or(Format::Text);
        for e in data::parse(&name, &text, fmt, &Default::default())?.examples {
            out.push(match e {
                Example::Text { text, .. } => text,
                Example::Tagged { words, .. } => words.join(" "),
            });
        }
    }
    if out.is_empty() {
        bail!("nothing to predict: give --text or --input");
    }
    Ok(out)
}

/// Predictions, one JSON object per text.
pub fn predict<B: Backend>(
    model_dir: &Path,
    assets: &Path,
    backend: B,
    texts: &[String],
    input: Option<&Path>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let Loaded {
        backend,
        model,
        store,
        tokenizer,
        manifest,
    } = job::load_export(model_dir, assets, backend)?;
    let mut out = Vec::new();
    for (i, text) in inputs(texts, input)?.into_iter().enumerate() {
        // Longer inputs are cut to the length the model was trained on: say so.
        let tokens = tokenizer.encode_text(&text, usize::MAX)?.len();
        let truncated = tokens > manifest.max_len;
        if truncated {
            eprintln!(
                "warning: text {} has {tokens} tokens; the model reads only the first {} (its max_len), the rest is ignored",
                i + 1,
                manifest.max_len
            );
        }
        let p = pollster::block_on(predict::predict(
            &backend,
            &model,
            &store,
            &tokenizer,
            manifest.task,
            &manifest.labels,
            manifest.max_len,
            &text,
        ))?;
        let mut line = match p {
            Prediction::Class {
                label,
                score,
                scores,
                logits,
            } => {
                let scores: serde_json::Map<String, serde_json::Value> = scores
                    .into_iter()
                    .map(|(n, v)| (n, f64::from(v).into()))
                    .collect();
                serde_json::json!({"text": text, "label": label, "score": score, "scores": scores, "logits": logits})
            }
            Prediction::Tags { tags } => serde_json::json!({"text": text, "tags": tags}),
            Prediction::Masks { fills } => serde_json::json!({"text": text, "masks": fills}),
            Prediction::Next { tokens, ids } => {
                serde_json::json!({"text": text, "next": tokens, "next_ids": ids})
            }
        };
        if truncated && let Some(o) = line.as_object_mut() {
            o.insert("truncated_to".into(), manifest.max_len.into());
        }
        out.push(line);
    }
    Ok(out)
}

/// Turns a resumable checkpoint into an export folder.
/// `tunelab generate`: the prompt, then each new piece of text as it comes (stdout), and a
/// line on stderr saying how many tokens came, how fast and why it stopped; with `json`, one
/// JSON object at the end instead.
pub fn generate<B: Backend>(
    model_dir: &Path,
    assets: &Path,
    backend: B,
    prompt: &str,
    config: &generate::GenerateConfig,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    config.sampling.validate()?;
    let is_export = [export::MANIFEST, export::ADAPTER_CONFIG]
        .iter()
        .any(|f| model_dir.join(f).is_file());
    let (backend, model, store, tokenizer) = if is_export {
        let l = job::load_export(model_dir, assets, backend)?;
        (l.backend, l.model, l.store, l.tokenizer)
    } else {
        let files = job::model_files(model_dir)?;
        session::load_causal_lm(backend, &files)
            .with_context(|| format!("loading {}", model_dir.display()))?
    };
    let mut out = std::io::stdout().lock();
    if !json {
        write!(out, "{prompt}")?;
        out.flush()?;
    }
    let started = std::time::Instant::now();
    let g = pollster::block_on(generate::generate(
        &backend,
        &model,
        &store,
        &tokenizer,
        prompt,
        config,
        &mut |piece| {
            // A closed stdout (`| head`) ends the generation.
            json || (write!(out, "{piece}").is_ok() && out.flush().is_ok())
        },
    ))
    .with_context(|| format!("generating with {}", model_dir.display()))?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        let line = serde_json::json!({
            "prompt": prompt,
            "text": g.text,
            "prompt_ids": g.prompt_ids,
            "ids": g.ids,
            "stop": g.stop,
        });
        writeln!(out, "{line}")?;
    } else {
        writeln!(out)?;
        let why = match g.stop {
            generate::Stop::MaxNewTokens => "max_new_tokens reached",
            generate::Stop::Eos => "end-of-sequence token",
            generate::Stop::ContextFull => "every position of the model used",
            generate::Stop::Cancelled => "output closed",
        };
        eprintln!(
            "{} new tokens in {secs:.2} s ({:.1} tokens/s); stopped: {why}",
            g.ids.len(),
            g.ids.len() as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

pub fn export_checkpoint(checkpoint_file: &Path, out: &Path, assets: &Path) -> anyhow::Result<()> {
    // Refused before any work: the folder must be new, empty or an earlier export.
    files_out::check_export_dir(out)?;
    let name = checkpoint_file.display().to_string();
    let bytes = std::fs::read(checkpoint_file).with_context(|| format!("reading {name}"))?;
    let (meta, _) = checkpoint::read(&name, &bytes)?;
    let cfg = meta.config.clone();
    let dir = job::model_dir(assets, &cfg.model)?;
    let base = job::model_files(&dir)?;
    let (base_cfg, tokenizer) = base.parts()?;
    let built = session::build_model(
        job::backend("cpu")?,
        &cfg,
        session::head_task(meta.kind, &meta.labels),
        &base,
        session::run_config(&cfg, &base, &base_cfg, &tokenizer, meta.kind)?,
    )?;
    // A trainer with no data, only to restore the checkpoint's weights into the model.
    let empty = data::Features {
        kind: job::feature_kind(meta.kind),
        items: vec![data::Feature {
            ids: vec![0],
            labels: vec![0],
            line: 0,
        }],
        special_lead: 0,
        special_tail: 0,
    };
    let masking = job::masking(meta.kind, &tokenizer, cfg.mlm_probability)?;
    let mut t = Trainer::new(
        built.backend,
        built.model,
        built.store,
        cfg.clone(),
        meta.kind,
        meta.labels.clone(),
        empty,
        tokenizer.pad_id(),
        masking,
    )?;
    t.restore(&name, &bytes)?;
    let info = ExportInfo {
        task: meta.kind,
        labels: meta.labels,
        base_model: built.base_model,
        max_len: cfg.max_len,
        base_config_json: built.config_json,
    };
    let mut files = pollster::block_on(export::export(&t.backend, &t.model, &t.store, &info))?;
    files.push(("tokenizer.json".into(), base.tokenizer_json));
    files_out::write_dir(out, &files)?;
    println!(
        "exported step {} of {} ({}) to {}: {}",
        meta.state.step,
        name,
        cfg.method.name(),
        out.display(),
        files
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `tunelab info`: the assets (checksums verified) and the devices this machine offers.
pub fn info(assets: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let manifest = job::manifest(assets)?;
    let gpu = pollster::block_on(tunelab_wgpu::Context::new(Default::default()));
    let cuda = tunelab_candle::device(tunelab_candle::DeviceKind::Cuda(0)).map(|_| ());

    if json {
        let value = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "assets": manifest,
            "wgpu": match &gpu { Ok(ctx) => serde_json::to_value(ctx.report())?, Err(e) => e.to_string().into() },
            "cuda": match &cuda { Ok(()) => "available".to_string(), Err(e) => e.to_string() },
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }

    println!("tunelab {}", env!("CARGO_PKG_VERSION"));
    println!("assets: {} (all checksums verified)", assets.display());
    for m in &manifest.models {
        let default = if m.id == manifest.default_model {
            " [default]"
        } else {
            ""
        };
        println!(
            "  model   {:<20} {} · {:.1}M parameters · {}{default}",
            m.id,
            m.architecture,
            m.parameters as f64 / 1e6,
            m.license
        );
    }
    for d in &manifest.datasets {
        let sizes: Vec<String> = d
            .split_sizes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "  dataset {:<20} {} · {} labels · {}",
            d.id,
            d.task,
            d.labels.len(),
            sizes.join(" / ")
        );
    }
    match &gpu {
        Ok(ctx) => {
            let r = ctx.report();
            println!(
                "wgpu: {} ({}, {}, {}) · max storage binding {} MiB",
                r.name,
                r.backend,
                r.device_type,
                r.architecture,
                r.limits.max_storage_buffer_binding_size >> 20
            );
        }
        Err(e) => println!("wgpu: unavailable: {e}"),
    }
    match cuda {
        Ok(()) => println!("cuda: available"),
        Err(e) => println!("cuda: {e}"),
    }
    Ok(())
}
