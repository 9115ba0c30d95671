//! `tunelab`: native fine-tuning jobs from the command line: `train`, `eval`, `predict`,
//! `generate`, `export`, `bench` and `info`.

mod args;
mod bench;
mod commands;
mod files_out;
mod job;
mod method_args;
mod train;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Training allocates and frees activation-sized buffers every op; glibc's malloc maps and
/// unmaps each large one, and the page faults cost ~20% of a CPU step. mimalloc keeps them
/// (with [`keep_freed_memory`]).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: its index in `mi_option_e` of the mimalloc v3 sources
/// that libmimalloc-sys 0.1.49 (pinned) builds, whose Rust bindings name no constant for it.
/// A test checks that it reads v3's default delay, 1000 ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory stays with the allocator for the life of the process instead of going back
/// to the OS a second after it is freed. A training step frees and allocates the same
/// activation buffers (hundreds of MiB) again every step; returned to the OS, each step faults
/// them back in and the kernel zeroes every page, on the thread that allocates. Measured on
/// the MiniLM step (2 threads, three alternating rounds): LoRA 503/507/424 -> 416/418/348 ms,
/// full fine-tuning 897/797/773 -> 704/742/620 ms. The peak memory is the same; it is just
/// not given back before the job ends. `MIMALLOC_PURGE_DELAY` in the environment still wins.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores a number in mimalloc's option table. It has no
        // preconditions beyond not racing another option write; this runs first thing in
        // `main`, before the program starts any thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "tunelab",
    version,
    about = "Fine-tune pretrained transformers with parameter-efficient methods."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fine-tune (or pretrain) a model. `tunelab train --task sentiment` trains LoRA on
    /// all-MiniLM-L6-v2 with the sample sentiment data; every option can also come from a
    /// TOML/JSON file given with --config.
    Train {
        #[command(flatten)]
        args: Box<args::TrainArgs>,
        /// Continue the run in this output folder from its last checkpoint (its
        /// train_config.json is used; other options are ignored).
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// Pause after this many steps in total, saving a checkpoint to resume from.
        #[arg(long, value_name = "STEPS")]
        stop_after: Option<u64>,
        /// Train into an --output-dir that already holds files (an earlier run): they are
        /// moved to `<dir>.previous` while the new run trains, put back if it fails and
        /// removed once it finishes. Without it such a folder is refused.
        #[arg(long, conflicts_with = "resume")]
        overwrite_output_dir: bool,
        /// Compute device: cpu, cuda or cuda:N (candle; CUDA needs a build with --features
        /// cuda), or wgpu (WebGPU natively: Vulkan, Metal or DX12).
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "assets", env = "TUNELAB_ASSETS")]
        assets: PathBuf,
    },
    /// Evaluate an exported model (a run's `final/` or `best/`, or a PEFT adapter folder) on
    /// a dataset: metrics, per-class scores and the confusion matrix.
    Eval {
        /// The export folder.
        #[arg(long)]
        model_dir: PathBuf,
        /// Data to evaluate on (default: the task's sample dataset, split --split).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The preset task whose dataset to use (default: from the run's train_config.json).
        #[arg(long)]
        task: Option<String>,
        #[arg(long, default_value = "test")]
        split: String,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "assets", env = "TUNELAB_ASSETS")]
        assets: PathBuf,
    },
    /// Classify or tag texts with an exported model (one JSON line per text); masked LM fills
    /// in [MASK] tokens.
    Predict {
        #[arg(long)]
        model_dir: PathBuf,
        /// A text to predict (repeatable).
        #[arg(long)]
        text: Vec<String>,
        /// A file of texts: plain text (one per line) or JSONL with a `text` field.
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "assets", env = "TUNELAB_ASSETS")]
        assets: PathBuf,
    },
    /// Continue a prompt with a causal language model, printing the text as it comes: an
    /// export of a causal-LM run (a run's `final/`, a PEFT adapter folder) or a model folder
    /// as it is (GPT-2: `config.json`, `model.safetensors`, a tokenizer).
    Generate {
        #[arg(long)]
        model_dir: PathBuf,
        #[arg(long, default_value = "")]
        prompt: String,
        #[arg(long, default_value_t = 50)]
        max_new_tokens: usize,
        /// 0 takes the likeliest token each time (greedy); above 0, tokens are drawn from the
        /// softmax of the logits divided by it.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// When sampling, draw among the K likeliest tokens only (0: all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// When sampling, draw among the fewest likeliest tokens holding this much
        /// probability (1: all).
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// Divide the logit of every token already in the text by this (1: none).
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        /// Seed of the draws: the same seed, prompt and model give the same text.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep going past the model's end-of-sequence token.
        #[arg(long)]
        ignore_eos: bool,
        /// Print one JSON object (prompt, text, token ids, why it stopped) at the end instead
        /// of streaming the text.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "assets", env = "TUNELAB_ASSETS")]
        assets: PathBuf,
    },
    /// Export a resumable checkpoint as a PEFT adapter (LoRA, prompt tuning) or safetensors
    /// plus a manifest (BitFit, full).
    Export {
        /// A run folder's checkpoint/checkpoint.safetensors (or the run folder).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "assets", env = "TUNELAB_ASSETS")]
        assets: PathBuf,
    },
    /// Show the installed model and datasets (verified by checksum) and the compute devices.
    Info {
        /// Folder written by `cargo xtask assets`.
        #[arg(long, default_value = "assets", env = "TUNELAB_ASSETS")]
        assets: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time a training step per PEFT method on the MiniLM shape (candle CPU backend).
    Bench {
        #[arg(long, default_value = "assets", env = "TUNELAB_ASSETS")]
        assets: PathBuf,
        /// Methods to run (default: every registered one).
        #[arg(long, value_delimiter = ',')]
        methods: Vec<String>,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Timed steps per method (after the warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// With --wgpu: skip the candle step timings.
        #[arg(long)]
        wgpu_only: bool,
        /// The candle device for the step timings: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Write the results as JSON lines here (one per method).
        #[arg(long)]
        json_out: Option<PathBuf>,
        /// Also measure WGSL matmul GFLOP/s and each method's training step on the wgpu
        /// adapter (`--methods none` for only the matmuls).
        #[arg(long)]
        wgpu: bool,
        /// With --wgpu: after the timed steps, run as many again with GPU timestamps on every
        /// compute pass and report the GPU time per kernel (needs timestamp queries).
        #[arg(long, requires = "wgpu")]
        profile: bool,
        /// Also measure matmul GFLOP/s on the candle `--device` at the shapes of the wgpu
        /// matmul table (on CUDA this is cuBLAS fp32, the WebGPU target's baseline).
        #[arg(long)]
        matmul: bool,
        /// CPU: alternate the timed steps between the pool's idle threads spinning for work
        /// (the default) and sleeping, and report both (`TUNELAB_CPU_WAIT`).
        #[arg(long, conflicts_with = "cpu_passes_ab")]
        cpu_wait_ab: bool,
        /// CPU: alternate the timed steps between the batch's parts running at once, one per
        /// core (the default), and one pass over the whole batch with each op split across the
        /// cores, and report both (`TUNELAB_CPU_PASSES`).
        #[arg(long)]
        cpu_passes_ab: bool,
        /// Internal: run a single method in this process and print its JSON line.
        #[arg(long, hide = true)]
        child: bool,
    },
}

/// Runs `$body` with `$be` bound to the backend `--device` names: `wgpu`, or candle's `cpu`,
/// `cuda`, `cuda:N`.
macro_rules! on_device {
    ($device:expr, $be:ident => $body:expr) => {
        match $device.as_str() {
            "wgpu" => {
                let $be = job::wgpu_backend()?;
                $body
            }
            other => {
                let $be = job::backend(other)?;
                $body
            }
        }
    };
}

/// A two-valued CPU switch from the environment: unset or `on` keeps the default, `off` calls
/// `set(false)`, anything else is an error naming the variable.
fn cpu_switch(var: &str, [on, off]: [&str; 2], set: fn(bool)) -> anyhow::Result<()> {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => Ok(()),
        Ok(v) if v == on => Ok(()),
        Ok(v) if v == off => {
            set(false);
            Ok(())
        }
        Ok(other) => anyhow::bail!("{var} is `{other}`; expected {on} or {off}"),
        Err(e) => anyhow::bail!("{var}: {e}"),
    }
}

/// The CPU switches: `TUNELAB_CPU_WAIT` — `active` (the default) keeps the CPU pool's idle
/// threads spinning for work between ops, `passive` lets them sleep
/// (`tunelab_candle::cpu::spin`); `TUNELAB_CPU_PASSES` — `split` (the default) runs a step's
/// batch as concurrent passes, one per core, `whole` as one pass with each op split across
/// the cores (`tunelab_candle::cpu::passes`).
fn cpu_switches() -> anyhow::Result<()> {
    cpu_switch(
        "TUNELAB_CPU_WAIT",
        ["active", "passive"],
        tunelab_candle::cpu::spin::set_enabled,
    )?;
    cpu_switch(
        "TUNELAB_CPU_PASSES",
        ["split", "whole"],
        tunelab_candle::cpu::passes::set_enabled,
    )
}

/// Prints the error chain (no backtrace) and exits 1.
fn main() -> std::process::ExitCode {
    keep_freed_memory();
    if let Err(e) = cpu_switches() {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match on_worker_thread(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the command on a thread of the compute pool (rayon's, one thread per core unless
/// `RAYON_NUM_THREADS` says otherwise) instead of on `main`.
///
/// A CPU training step is a few thousand parallel ops. Called from `main`, each one hands its
/// work to the pool's threads and puts `main` to sleep until they finish, then wakes it:
/// thousands of cross-thread wake-ups a step, and one thread more than there are cores, so
/// the pool's threads, still spinning for work, and `main` preempt each other. Run on a pool
/// thread, an op splits its work in place and the other threads steal their share. Measured
/// on the MiniLM LoRA step, 12 steps on 2 cores: 9317 → 2143 voluntary and 6633 → 146
/// involuntary context switches, 1.24 → 0.26 s system time; about 10% off the step time
/// (seven alternating rounds; this machine's noise is of the same order). If the pool cannot
/// be built, the command runs on `main`.
fn on_worker_thread(f: fn() -> anyhow::Result<()>) -> anyhow::Result<()> {
    // `main`'s stack size: commands run as deep there as they would have on `main`.
    const STACK: usize = 8 << 20;
    match rayon::ThreadPoolBuilder::new().stack_size(STACK).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Train {
            args,
            resume,
            stop_after,
            overwrite_output_dir,
            device,
            assets,
        } => {
            let cfg = args.resolve()?;
            let existing = if overwrite_output_dir {
                train::Existing::Overwrite
            } else {
                train::Existing::Refuse
            };
            on_device!(device, be => train::run(
                cfg,
                &assets,
                be,
                resume.as_deref(),
                args.prompt_init_text.as_deref(),
                stop_after,
                existing,
            )?);
            Ok(())
        }
        Command::Eval {
            model_dir,
            file,
            task,
            split,
            batch_size,
            json,
            device,
            assets,
        } => {
            on_device!(device, be => commands::eval(
                &model_dir,
                &assets,
                be,
                task.as_deref(),
                file.as_deref(),
                &split,
                batch_size,
                json,
            )?);
            Ok(())
        }
        Command::Predict {
            model_dir,
            text,
            input,
            device,
            assets,
        } => {
            let lines = on_device!(device, be => commands::predict(&model_dir, &assets, be, &text, input.as_deref())?);
            for line in lines {
                println!("{line}");
            }
            Ok(())
        }
        Command::Generate {
            model_dir,
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed,
            ignore_eos,
            json,
            device,
            assets,
        } => {
            let config = tunelab_core::generate::GenerateConfig {
                max_new_tokens,
                sampling: tunelab_core::generate::Sampling {
                    temperature,
                    top_k,
                    top_p,
                    repetition_penalty,
                },
                seed,
                stop_at_eos: !ignore_eos,
            };
            on_device!(device, be => commands::generate(&model_dir, &assets, be, &prompt, &config, json)?);
            Ok(())
        }
        Command::Export {
            checkpoint,
            out,
            assets,
        } => {
            let file = if checkpoint.is_dir() {
                checkpoint.join("checkpoint/checkpoint.safetensors")
            } else {
                checkpoint
            };
            commands::export_checkpoint(&file, &out, &assets)
        }
        Command::Info { assets, json } => commands::info(&assets, json),
        Command::Bench {
            assets,
            methods,
            batch,
            seq,
            steps,
            warmup,
            json_out,
            wgpu,
            wgpu_only,
            profile,
            matmul,
            device,
            cpu_wait_ab,
            cpu_passes_ab,
            child,
        } => {
            let ab = if cpu_wait_ab {
                Some(bench::CpuAb::Wait)
            } else if cpu_passes_ab {
                Some(bench::CpuAb::Passes)
            } else {
                None
            };
            if child {
                let name = methods.first().context("--child needs one method")?;
                let plan = bench::Plan {
                    assets: &assets,
                    method_name: name,
                    batch,
                    seq,
                    steps,
                    warmup,
                };
                let r = bench::run_one(plan, wgpu, profile, &device, ab)?;
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            let names: Vec<String> = if methods == ["none"] {
                Vec::new()
            } else if methods.is_empty() {
                bench::methods()
                    .into_iter()
                    .map(|(n, _)| n.to_string())
                    .collect()
            } else {
                methods
            };
            anyhow::ensure!(
                ab.is_none() || device == "cpu",
                "--cpu-wait-ab and --cpu-passes-ab compare CPU steps; they do not apply to \
                 --device {device}"
            );
            let exe = std::env::current_exe()?;
            let mut lines = Vec::new();
            println!(
                "{:<8} {:>12} {:>12} {:>11} {:>11} {:>10} {:>10}",
                "method", "trainable", "total", "median ms", "min ms", "tokens/s", "peak MiB"
            );
            // Each (method, backend) in its own process, so its peak memory is its own.
            let mut runs: Vec<(String, bool)> = Vec::new();
            if !(wgpu && wgpu_only) {
                runs.extend(names.iter().map(|n| (n.clone(), false)));
            }
            if wgpu {
                runs.extend(names.iter().map(|n| (n.clone(), true)));
            }
            for (name, on_wgpu) in runs {
                let mut c = std::process::Command::new(&exe);
                c.args(["bench", "--child", "--methods", &name, "--device", &device])
                    .args(["--batch", &batch.to_string(), "--seq", &seq.to_string()])
                    .args([
                        "--steps",
                        &steps.to_string(),
                        "--warmup",
                        &warmup.to_string(),
                    ])
                    .arg("--assets")
                    .arg(&assets);
                if let Some(ab) = ab {
                    c.arg(ab.flag());
                }
                if on_wgpu {
                    c.arg("--wgpu");
                    if profile {
                        c.arg("--profile");
                    }
                }
                let out = c.output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "bench {name}{} failed: {}",
                    if on_wgpu { " on wgpu" } else { "" },
                    String::from_utf8_lossy(&out.stderr)
                );
                let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let r: bench::Result = serde_json::from_str(&line)?;
                println!(
                    "{:<8} {:>12} {:>12} {:>11.1} {:>11.1} {:>10.0} {:>10.0}",
                    r.method,
                    r.trainable,
                    r.total,
                    r.median_ms,
                    r.min_ms,
                    r.tokens_per_s,
                    r.peak_rss_mib
                );
                if let Some(ab) = &r.ab {
                    println!(
                        "  {}: median {:.1} ms; default / alternative, median of step pairs: \
                         {:.3}",
                        ab.alternative, ab.alt_median_ms, ab.median_pair_ratio
                    );
                }
                if on_wgpu && let Some(cpu) = r.host_cpu_ms {
                    println!("  CPU time of the stepping thread: {cpu:.2} ms per step");
                }
                if let (Some(kernels), Some(gpu)) = (&r.kernels, r.gpu_ms_per_step) {
                    print_profile(kernels, gpu, r.median_ms);
                }
                lines.push(line);
            }
            if matmul {
                let rows = bench::candle_matmul(&device, steps.max(3))?;
                println!("\ncandle matmul on {device}");
                print_matmuls(&rows);
                for r in &rows {
                    lines.push(serde_json::to_string(
                        &serde_json::json!({"candle_matmul": r, "device": device}),
                    )?);
                }
            }
            if wgpu {
                let (report, rows) = bench::wgpu_matmul(steps.max(3))?;
                println!(
                    "\nwgpu matmul on {} ({}, {})",
                    report.name, report.backend, report.device_type
                );
                print_matmuls(&rows);
                for r in &rows {
                    lines.push(serde_json::to_string(
                        &serde_json::json!({"wgpu_matmul": r, "adapter": report.name}),
                    )?);
                }
            }
            if let Some(path) = json_out {
                std::fs::write(&path, lines.join("\n") + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

fn print_matmuls(rows: &[bench::MatmulResult]) {
    println!(
        "{:<46} {:>16} {:>10} {:>11} {:>9}",
        "shape", "BxMxNxK", "kernel", "median ms", "GFLOP/s"
    );
    for r in rows {
        println!(
            "{:<46} {:>16} {:>10} {:>11.3} {:>9.1}",
            r.what, r.shape, r.kernel, r.median_ms, r.gflops
        );
    }
}

/// The kernels of a profiled wgpu step, largest GPU time first.
fn print_profile(kernels: &[tunelab_wgpu::KernelTime], gpu_ms: f64, wall_ms: f64) {
    println!(
        "  GPU time {gpu_ms:.2} ms of a {wall_ms:.2} ms step ({:.0}%); per step:",
        100.0 * gpu_ms / wall_ms
    );
    println!(
        "  {:<28} {:>7} {:>10} {:>6}",
        "kernel", "passes", "GPU ms", "%"
    );
    for k in kernels.iter().take(16) {
        println!(
            "  {:<28} {:>7} {:>10.3} {:>6.1}",
            k.kernel,
            k.passes,
            k.total_ms,
            100.0 * k.total_ms / gpu_ms.max(f64::MIN_POSITIVE)
        );
    }
}

#[cfg(test)]
mod tests {
    /// The option index is mimalloc's purge delay: it reads v3's default delay (1000 ms; no
    /// other option defaults to it) and `keep_freed_memory` turns purging off.
    #[test]
    #[allow(unsafe_code)]
    fn the_option_set_at_start_up_is_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads of one number in mimalloc's option table; no other test writes it.
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(get(), 1000);
        super::keep_freed_memory();
        assert_eq!(get(), -1);
    }
}
