//! `tunelab train`: the training loop with progress, a JSONL metrics log, resumable
//! checkpoints, the best and final exports and a summary table.
//!
//! Output folder:
//! - `train_config.json`: the resolved config (what `--resume` reads);
//! - `metrics.jsonl`: one line per step (`"kind": "train"`) and per evaluation (`"eval"`);
//! - `checkpoint/checkpoint.safetensors`: the latest resumable state (written atomically);
//! - `best/`, `final/`: exports (PEFT format for LoRA and prompt tuning);
//! - `summary.json`: final metrics, steps, wall time, tokens/s.

use crate::files_out;
use crate::job::{self, Job};
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tunelab_core::backend::Backend;
use tunelab_core::export::{self, ExportInfo};
use tunelab_core::session;
use tunelab_core::trainer::{EvalReport, StepReport, TrainConfig, TrainError, Trainer};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub task: String,
    pub method: String,
    pub model: String,
    pub trainable: usize,
    pub total: usize,
    pub steps: u64,
    pub epochs: f64,
    pub train_seconds: f64,
    pub wall_seconds: f64,
    pub tokens_per_s: f64,
    pub final_loss: f32,
    pub eval: Option<EvalReport>,
    /// The final model on the dataset's test split (sample datasets).
    pub test: Option<EvalReport>,
    pub best: Option<tunelab_core::trainer::Best>,
    pub output_dir: String,
}

struct Log {
    file: std::fs::File,
}

impl Log {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { file })
    }

    fn write(&mut self, v: &serde_json::Value) -> anyhow::Result<()> {
        writeln!(self.file, "{v}")?;
        Ok(())
    }
}

fn export_files<B: Backend>(
    trainer: &Trainer<B>,
    job_info: &ExportInfo,
    tokenizer_json: &[u8],
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = pollster::block_on(export::export(
        &trainer.backend,
        &trainer.model,
        &trainer.store,
        job_info,
    ))?;
    files.push(("tokenizer.json".into(), tokenizer_json.to_vec()));
    Ok(files)
}

fn metrics_line(r: &EvalReport) -> String {
    r.metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// How a fresh run treats an output folder that already holds files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse to start (the default, as `Trainer`'s).
    Refuse,
    /// `--overwrite-output-dir`: replace it, but only once the new run has not failed.
    Overwrite,
}

/// An output folder's earlier contents, moved aside while a new run writes the folder
/// (`--overwrite-output-dir`): put back if the run fails, removed once it finished or paused.
struct Previous {
    out: PathBuf,
    kept: PathBuf,
}

impl Previous {
    /// Makes `out` ready for a fresh run: absent or empty as it is, or (with
    /// [`Existing::Overwrite`]) emptied by moving what it holds to `<out>.previous`.
    fn make_room(out: &Path, existing: Existing) -> anyhow::Result<Option<Self>> {
        if out.is_file() {
            anyhow::bail!(
                "--output-dir {} is a file; give a folder for the run",
                out.display()
            );
        }
        let entries: Vec<String> = match std::fs::read_dir(out) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
        };
        if entries.is_empty() {
            return Ok(None);
        }
        if existing == Existing::Refuse {
            let mut shown: Vec<&str> = entries.iter().map(String::as_str).take(4).collect();
            shown.sort_unstable();
            anyhow::bail!(
                "output folder {} is not empty (it holds {}); nothing was changed. Continue that run with `--resume {0}`, replace it with --overwrite-output-dir, or choose another --output-dir",
                out.display(),
                shown.join(", ")
            );
        }
        let name = out
            .file_name()
            .with_context(|| format!("{} does not name a folder", out.display()))?;
        let kept = out.with_file_name(format!("{}.previous", name.to_string_lossy()));
        if kept.exists() {
            anyhow::bail!(
                "{} exists (an earlier run's files kept by --overwrite-output-dir); remove it first, nothing was changed",
                kept.display()
            );
        }
        std::fs::rename(out, &kept)
            .with_context(|| format!("moving {} aside to {}", out.display(), kept.display()))?;
        eprintln!(
            "--overwrite-output-dir: the earlier contents of {} are kept in {} until this run finishes (put back if it fails)",
            out.display(),
            kept.display()
        );
        Ok(Some(Self {
            out: out.to_path_buf(),
            kept,
        }))
    }

    /// The new run failed: its files go, the earlier ones come back.
    fn restore(self) {
        let _ = std::fs::remove_dir_all(&self.out);
        match std::fs::rename(&self.kept, &self.out) {
            Ok(()) => eprintln!(
                "the earlier contents of {} were put back",
                self.out.display()
            ),
            Err(e) => eprintln!(
                "could not put {} back to {}: {e}; the files are still there",
                self.kept.display(),
                self.out.display()
            ),
        }
    }

    /// The new run finished (or paused): the earlier files are replaced for good.
    fn discard(self) -> anyhow::Result<()> {
        std::fs::remove_dir_all(&self.kept)
            .with_context(|| format!("removing {}", self.kept.display()))
    }
}

/// Runs (or resumes) training. A fresh run into a folder that holds files is refused unless
/// `existing` is [`Existing::Overwrite`]; a run that fails leaves the earlier files as they
/// were.
pub fn run<B: Backend>(
    cfg: TrainConfig,
    assets: &Path,
    backend: B,
    resume: Option<&Path>,
    prompt_text: Option<&str>,
    stop_after: Option<u64>,
    existing: Existing,
) -> anyhow::Result<Option<Summary>> {
    let previous = match resume {
        None => Previous::make_room(Path::new(&cfg.output_dir()), existing)?,
        Some(_) => None,
    };
    let result = run_in(cfg, assets, backend, resume, prompt_text, stop_after);
    match (result, previous) {
        (Ok(s), Some(p)) => {
            p.discard()?;
            Ok(s)
        }
        (Err(e), Some(p)) => {
            p.restore();
            Err(e)
        }
        (r, None) => r,
    }
}

fn run_in<B: Backend>(
    mut cfg: TrainConfig,
    assets: &Path,
    backend: B,
    resume: Option<&Path>,
    prompt_text: Option<&str>,
    stop_after: Option<u64>,
) -> anyhow::Result<Option<Summary>> {
    let wall = Instant::now();
    let checkpoint_bytes = match resume {
        Some(dir) => {
            let cfg_path = dir.join("train_config.json");
            let text = std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("resuming: reading {}", cfg_path.display()))?;
            cfg = TrainConfig::parse(&cfg_path.display().to_string(), &text)?;
            cfg.output_dir = Some(dir.display().to_string());
            let ck = dir.join("checkpoint/checkpoint.safetensors");
            Some((
                ck.clone(),
                std::fs::read(&ck)
                    .with_context(|| format!("resuming: reading {}", ck.display()))?,
            ))
        }
        None => None,
    };
    let out = PathBuf::from(cfg.output_dir());
    let Job {
        session,
        tokenizer_json,
        files,
    } = job::prepare(&cfg, assets, backend, prompt_text)?;
    let session::Session {
        mut trainer,
        validation,
        tokenizer,
        config_json,
        base_model,
        ..
    } = session;
    // The trainer's config has the prompt's initialisation tokens filled in.
    cfg = trainer.config.clone();
    let (kind, labels) = (trainer.kind, trainer.labels.clone());
    let (trainable, total) = trainer.store.counts(&trainer.backend);
    if let Some((path, bytes)) = &checkpoint_bytes {
        trainer.restore(&path.display().to_string(), bytes)?;
        if trainer.is_done() {
            anyhow::bail!(
                "the run in {} already finished (step {} of {}); nothing was changed. Its exports are in {}",
                out.display(),
                trainer.state.step,
                trainer.total_steps(),
                out.join("final").display()
            );
        }
        // Steps logged after the checkpoint will be trained again: drop them from the log.
        let log_path = out.join("metrics.jsonl");
        if let Ok(text) = std::fs::read_to_string(&log_path) {
            let step = trainer.state.step;
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_none_or(|s| s <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            files_out::write_file(&log_path, kept.as_bytes())?;
        }
        eprintln!(
            "resumed from {} at step {} (epoch {})",
            path.display(),
            trainer.state.step,
            trainer.state.epoch + 1
        );
    } else {
        // `run` made sure the folder is new or empty.
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    }
    files_out::write_file(
        &out.join("train_config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    let info = ExportInfo {
        task: kind,
        labels,
        base_model,
        max_len: cfg.max_len,
        base_config_json: config_json,
    };
    let mut log = Log::open(&out.join("metrics.jsonl"))?;
    eprintln!(
        "{} · {} · {} · {} of {} parameters train ({:.3}%) · {} examples · {} steps ({} per epoch) → {}",
        cfg.task,
        cfg.method.name(),
        cfg.model,
        trainable,
        total,
        100.0 * trainable as f64 / total.max(1) as f64,
        trainer.train_features().len(),
        trainer.total_steps(),
        trainer.steps_per_epoch(),
        out.display()
    );

    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let b = ProgressBar::new(trainer.total_steps());
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} · {msg} · {elapsed_precise} < {eta_precise}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_position(trainer.state.step);
        Some(b)
    } else {
        None
    };
    let say = |bar: &Option<ProgressBar>, line: String| match bar {
        Some(b) => b.println(line),
        None => eprintln!("{line}"),
    };
    let plain_every = (trainer.total_steps() / 20).max(1);
    let mut train_secs = 0.0;
    let mut tokens = 0u64;
    let mut last: Option<StepReport> = None;
    let mut last_eval: Option<EvalReport> = None;
    while !trainer.is_done() {
        let t0 = Instant::now();
        let r = match pollster::block_on(trainer.train_step()) {
            Ok(r) => r,
            Err(e @ TrainError::Step { .. }) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                let ck = out.join("checkpoint/checkpoint.safetensors");
                let kept = if ck.is_file() {
                    format!("the last good checkpoint is intact: {}", ck.display())
                } else {
                    "no checkpoint had been saved yet".to_string()
                };
                log.write(&serde_json::json!({"kind": "stopped", "step": trainer.state.step + 1, "error": e.to_string()}))?;
                anyhow::bail!("training stopped: {e}; {kept}");
            }
            Err(e) => return Err(e.into()),
        };
        let dt = t0.elapsed().as_secs_f64();
        train_secs += dt;
        tokens += r.tokens;
        let tps = r.tokens as f64 / dt.max(1e-9);
        log.write(&serde_json::json!({
            "kind": "train", "step": r.step, "epoch": r.epoch, "loss": r.loss,
            "lr": r.lr, "grad_norm": r.grad_norm, "tokens": r.tokens, "tokens_per_s": tps,
        }))?;
        let msg = format!("loss {:.4} · lr {:.2e} · {:.0} tok/s", r.loss, r.lr, tps);
        match &bar {
            Some(b) => {
                b.set_message(msg);
                b.set_position(r.step);
            }
            None if r.step % plain_every == 0 || r.step == 1 => eprintln!(
                "step {}/{} · epoch {:.2} · {msg}",
                r.step,
                trainer.total_steps(),
                r.epoch
            ),
            None => {}
        }
        if trainer.should_eval(&r)
            && let Some(val) = &validation
        {
            let report = pollster::block_on(trainer.evaluate(val))?;
            let best = trainer.record_eval(&report);
            log.write(&serde_json::json!({
                "kind": "eval", "step": r.step, "epoch": r.epoch, "metrics": report.metrics,
            }))?;
            say(
                &bar,
                format!(
                    "eval @ step {} · {}{}",
                    r.step,
                    metrics_line(&report),
                    if best { " · best so far" } else { "" }
                ),
            );
            if best {
                files_out::write_dir(
                    &out.join("best"),
                    &export_files(&trainer, &info, &tokenizer_json)?,
                )?;
            }
            last_eval = Some(report);
        }
        if trainer.should_save(&r) {
            let bytes = pollster::block_on(trainer.checkpoint())?;
            files_out::write_file(&out.join("checkpoint/checkpoint.safetensors"), &bytes)?;
        }
        last = Some(r);
        if stop_after.is_some_and(|n| r.step >= n) && !trainer.is_done() {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let bytes = pollster::block_on(trainer.checkpoint())?;
            files_out::write_file(&out.join("checkpoint/checkpoint.safetensors"), &bytes)?;
            eprintln!(
                "paused at step {} of {}; continue with `tunelab train --resume {}`",
                r.step,
                trainer.total_steps(),
                out.display()
            );
            return Ok(None);
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    files_out::write_dir(
        &out.join("final"),
        &export_files(&trainer, &info, &tokenizer_json)?,
    )?;
    let test = match &files.test {
        Some(p) => {
            let rows = job::read_split(p, &cfg)?;
            let f = tunelab_core::data::encode(
                &tokenizer,
                &rows.examples,
                job::feature_kind(kind),
                &trainer.labels,
                cfg.max_len,
                &p.display().to_string(),
            )?;
            let r = pollster::block_on(tunelab_core::trainer::evaluate(
                &trainer.backend,
                &trainer.model,
                &trainer.store,
                kind,
                &trainer.labels,
                &f,
                tunelab_core::trainer::EvalOptions {
                    batch_size: cfg.batch_size.max(32),
                    pad_id: tokenizer.pad_id(),
                    masking: job::masking(kind, &tokenizer, cfg.mlm_probability)?,
                    max_examples: None,
                },
            ))?;
            eprintln!("test ({}) · {}", p.display(), metrics_line(&r));
            Some(r)
        }
        None => None,
    };
    let summary = Summary {
        task: cfg.task.clone(),
        method: cfg.method.name().into(),
        model: if cfg.from_scratch.is_some() {
            "scratch".into()
        } else {
            cfg.model.clone()
        },
        trainable,
        total,
        steps: trainer.state.step,
        epochs: last.map_or(0.0, |r| r.epoch),
        train_seconds: train_secs,
        wall_seconds: wall.elapsed().as_secs_f64(),
        tokens_per_s: tokens as f64 / train_secs.max(1e-9),
        final_loss: last.map_or(f32::NAN, |r| r.loss),
        eval: last_eval,
        test,
        best: trainer.state.best.clone(),
        output_dir: out.display().to_string(),
    };
    files_out::write_file(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    print_summary(&summary);
    Ok(Some(summary))
}

fn print_summary(s: &Summary) {
    println!();
    println!(
        "| {:<22} | {:<40} |",
        "run",
        format!("{} · {} · {}", s.task, s.method, s.model)
    );
    println!("|{:-<24}|{:-<42}|", "", "");
    let row = |k: &str, v: String| println!("| {k:<22} | {v:<40} |");
    row(
        "trainable / total",
        format!("{} / {}", s.trainable, s.total),
    );
    row("steps · epochs", format!("{} · {:.2}", s.steps, s.epochs));
    row(
        "train time",
        format!("{:.1} s (wall {:.1} s)", s.train_seconds, s.wall_seconds),
    );
    row("tokens/s", format!("{:.0}", s.tokens_per_s));
    row("last training loss", format!("{:.4}", s.final_loss));
    if let Some(e) = &s.eval {
        for (k, v) in &e.metrics {
            row(&format!("eval {k}"), format!("{v:.4}"));
        }
    }
    if let Some(e) = &s.test {
        for (k, v) in &e.metrics {
            row(&format!("test {k}"), format!("{v:.4}"));
        }
    }
    if let Some(b) = &s.best {
        row(
            "best",
            format!("{} {:.4} at step {}", b.metric, b.value, b.step),
        );
    }
    row("exports", format!("{0}/final, {0}/best", s.output_dir));
}
