//! `tunelab bench`: the time of one training step on the MiniLM shape (6 layers, hidden 384,
//! 12 heads) at batch 8 × sequence 128, per PEFT method, on the candle CPU backend.
//!
//! Each method runs in its own process so its peak resident memory (VmHWM) is its own. The
//! step is the whole of training: forward, loss, backward, global-norm clipping (one scalar
//! read back) and the AdamW update. Reported: the median and the minimum of the timed steps
//! after warm-up.

use anyhow::Context as _;
use std::time::Instant;
use tunelab_core::Shape;
use tunelab_core::backend::Backend;
use tunelab_core::data::MicroBatch;
use tunelab_core::models::heads::Task;
use tunelab_core::models::task_model::TaskModel;
use tunelab_core::optim::{AdamWConfig, Optimizer, Schedule};
use tunelab_core::params::ParamStore;
use tunelab_core::peft::{Method, REGISTRY};
use tunelab_core::rng::Rng;
use tunelab_core::trainer::step::{self as train, Micro};
use tunelab_wgpu::ops::matmul::Dims;

/// The methods benchmarked: every registered one with its defaults.
pub fn methods() -> Vec<(&'static str, Method)> {
    REGISTRY
        .iter()
        .filter_map(|i| Some((i.name, Method::named(i.name)?)))
        .collect()
}

/// all-MiniLM-L6-v2's `config.json` fields that matter for the shape.
const MINILM_SHAPE: &str = r#"{"model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
  "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
  "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
  "hidden_act": "gelu", "pad_token_id": 0}"#;

/// One method's numbers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Result {
    pub method: String,
    pub trainable: usize,
    pub total: usize,
    pub steps: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mib: f64,
    /// With `--profile` on wgpu: GPU time per kernel per step, largest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<Vec<tunelab_wgpu::KernelTime>>,
    /// With `--profile` on wgpu: the summed GPU time of a step's passes, in ms (the rest of
    /// the step's wall time is recording, submission and waiting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_ms_per_step: Option<f64>,
    /// With `--cpu-wait-ab` or `--cpu-passes-ab`: the steps with the alternative against
    /// those with the default (the rest of the numbers are the default steps').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab: Option<AbResult>,
    /// CPU time the stepping thread spent per timed step (Linux), in ms: on a GPU backend
    /// that is recording and submitting the step's commands, not waiting for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpu_ms: Option<f64>,
}

/// What `--cpu-wait-ab` and `--cpu-passes-ab` compare, step by step in one process: a CPU
/// default against its alternative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuAb {
    /// The pool's idle threads spinning for work (`tunelab_candle::cpu::spin`) against
    /// sleeping.
    Wait,
    /// The batch's parts as concurrent passes, one per core (`tunelab_candle::cpu::passes`),
    /// against one pass over the whole batch with each op split across the cores.
    Passes,
}

impl CpuAb {
    /// Turns the default (`true`) or the alternative on.
    fn set_default(self, on: bool) {
        match self {
            Self::Wait => tunelab_candle::cpu::spin::set_enabled(on),
            Self::Passes => tunelab_candle::cpu::passes::set_enabled(on),
        }
    }

    /// The command-line flag that asks for it.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Wait => "--cpu-wait-ab",
            Self::Passes => "--cpu-passes-ab",
        }
    }

    /// The alternative, in words.
    pub fn alternative(self) -> &'static str {
        match self {
            Self::Wait => "idle threads sleeping",
            Self::Passes => "one pass over the whole batch",
        }
    }
}

/// An A/B comparison's result (see [`CpuAb`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AbResult {
    /// The alternative, in words.
    pub alternative: String,
    /// The median of the steps with the alternative.
    pub alt_median_ms: f64,
    /// The median over pairs of a default step's time over the alternative step's after it.
    pub median_pair_ratio: f64,
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`, Linux).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Runs one method in this process on candle (`device`: cpu, cuda, cuda:N), or on wgpu with
/// `wgpu`.
pub fn run_one(
    plan: Plan,
    wgpu: bool,
    profile: bool,
    device: &str,
    ab: Option<CpuAb>,
) -> anyhow::Result<Result> {
    let method_name = plan.method_name;
    if wgpu {
        let be = crate::job::wgpu_backend()?;
        let profiler = profile.then(|| be.context());
        let mut r = run_on(&be, plan, profiler, None)?;
        r.method = format!("{method_name}@wgpu");
        return Ok(r);
    }
    let be = crate::job::backend(device)?;
    let mut r = run_on(&be, plan, None, ab.filter(|_| device == "cpu"))?;
    if device != "cpu" {
        r.method = format!("{method_name}@{device}");
    }
    Ok(r)
}

/// One method's timing: the assets holding the model, the method, the shape, the steps.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    pub assets: &'a std::path::Path,
    pub method_name: &'a str,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub warmup: usize,
}

/// Times `plan` on `be`; with `profiler`, then per-kernel GPU times; with `ab`, steps
/// alternate between a CPU default and its alternative.
fn run_on<B: Backend>(
    be: &B,
    plan: Plan,
    profiler: Option<&tunelab_wgpu::Context>,
    ab: Option<CpuAb>,
) -> anyhow::Result<Result> {
    let (assets, method_name, batch, seq) = (plan.assets, plan.method_name, plan.batch, plan.seq);
    let (steps, warmup) = (plan.steps, plan.warmup);
    let (_, method) = methods()
        .into_iter()
        .find(|(n, _)| *n == method_name)
        .with_context(|| {
            format!(
                "unknown method `{method_name}` (expected one of {})",
                Method::names()
            )
        })?;
    // The installed MiniLM; without assets, the same shape randomly initialised (the step's
    // cost does not depend on the values).
    let (name, config, tensors) = if assets.join("manifest.json").is_file() {
        let manifest = tunelab_core::Manifest::verify_dir(assets)?;
        let card = manifest
            .model(&manifest.default_model)
            .context("default model")?;
        let dir = assets.join(&card.dir);
        let config = std::fs::read_to_string(dir.join("config.json"))?;
        let (tensors, _) = tunelab_core::safetensors_io::read(
            "model.safetensors",
            &std::fs::read(dir.join("model.safetensors"))?,
        )?;
        (card.dir.clone(), config, tensors)
    } else {
        eprintln!(
            "{} has no assets: timing a randomly initialised model of all-MiniLM-L6-v2's shape",
            assets.display()
        );
        let config = MINILM_SHAPE.to_string();
        let cfg = tunelab_core::models::ModelConfig::from_json("minilm-shape", &config)?;
        let tensors = cfg.random_tensors(0);
        ("minilm-shape".to_string(), config, tensors)
    };
    let mut store = ParamStore::new();
    let model = TaskModel::load(
        be,
        &name,
        &config,
        tensors,
        Task::SequenceClassification { num_labels: 2 },
        &method,
        0,
        &mut store,
    )?;
    let (trainable, total) = store.counts(be);

    let mut rng = Rng::new(42);
    let vocab = model.config.dims().vocab_size as u64;
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| 1000 + rng.below(vocab - 1000) as u32)
        .collect();
    let mask = vec![1.0f32; batch * seq];
    let labels: Vec<u32> = (0..batch).map(|i| (i % 2) as u32).collect();
    // The batch as the trainer runs it: in as many parts as the backend runs passes at once
    // (`MicroBatch::split`), and whole, for `--cpu-passes-ab`'s alternative steps.
    let whole = MicroBatch {
        ids,
        mask,
        labels,
        batch,
        len: seq,
        loss_tokens: batch,
    };
    let upload = |parts: usize| -> anyhow::Result<Vec<Micro<B::Tensor>>> {
        whole
            .split(parts)
            .iter()
            .map(|b| {
                Ok(Micro {
                    input: model.input(be, &store, &b.ids, &b.mask, b.batch, b.len)?,
                    labels: be.upload_u32(&b.labels, &Shape::new([b.batch]))?,
                    dropout_seed: None,
                })
            })
            .collect()
    };
    let (split, one) = (upload(be.concurrent_passes())?, upload(1)?);
    let mut opt = Optimizer::<B>::new(
        AdamWConfig {
            lr: 1e-4,
            ..Default::default()
        },
        Schedule::Constant { warmup: 0 },
    );

    let mut step = |store: &mut ParamStore<B>| {
        let micro = if be.concurrent_passes() > 1 {
            &split
        } else {
            &one
        };
        pollster::block_on(train::step_accumulated(
            be,
            &model,
            store,
            &mut opt,
            micro,
            1.0 / batch as f32,
            1.0,
        ))
    };
    let mut times = Vec::new();
    let mut cpu_ns = 0u64;
    // With `ab`, timed steps alternate between the default and the alternative (the first
    // the default), and `alt` holds the alternative's.
    let mut alt = Vec::new();
    for i in 0..warmup + steps {
        let alternative = ab.is_some() && i >= warmup && (i - warmup) % 2 == 1;
        if let Some(ab) = ab {
            ab.set_default(!alternative);
        }
        let cpu0 = thread_cpu_ns();
        let start = Instant::now();
        step(&mut store)?;
        if alternative {
            alt.push(start.elapsed().as_secs_f64() * 1e3);
            continue;
        }
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
            if let (Some(a), Some(b)) = (cpu0, thread_cpu_ns()) {
                cpu_ns += b.saturating_sub(a);
            }
        }
    }
    let host_cpu_ms = (cpu_ns > 0).then(|| cpu_ns as f64 / 1e6 / times.len().max(1) as f64);
    // Each default step against the alternative one right after it, before `times` is sorted.
    if let Some(ab) = ab {
        ab.set_default(true);
    }
    let ab = ab.filter(|_| !alt.is_empty()).map(|ab| {
        let mut ratios: Vec<f64> = times.iter().zip(&alt).map(|(a, p)| a / p).collect();
        AbResult {
            alternative: ab.alternative().to_string(),
            alt_median_ms: median(&mut alt),
            median_pair_ratio: median(&mut ratios),
        }
    });
    // Profiled steps run after the timed ones, so timestamp queries do not touch the timings.
    let (mut kernels, mut gpu_ms_per_step) = (None, None);
    if let Some(ctx) = profiler {
        // A step's last commands (the optimiser update) wait for the next readback: each
        // step is flushed before its timestamps are read back.
        be.flush();
        ctx.start_profiling()?;
        for _ in 0..steps {
            step(&mut store)?;
            be.flush();
            pollster::block_on(ctx.collect_profile())?;
        }
        let (rows, untimed) = ctx.stop_profiling();
        anyhow::ensure!(
            untimed == 0,
            "{untimed} passes were not timed: a step records more passes than one profiling round holds"
        );
        let per = steps.max(1) as f64;
        gpu_ms_per_step = Some(rows.iter().map(|k| k.total_ms).sum::<f64>() / per);
        kernels = Some(
            rows.into_iter()
                .map(|k| tunelab_wgpu::KernelTime {
                    passes: (k.passes as f64 / per).round() as u64,
                    total_ms: k.total_ms / per,
                    kernel: k.kernel,
                })
                .collect(),
        );
    }
    let median = median(&mut times);
    Ok(Result {
        method: method_name.to_string(),
        trainable,
        total,
        steps: times.len(),
        median_ms: median,
        min_ms: times[0],
        tokens_per_s: (batch * seq) as f64 / (median / 1e3),
        peak_rss_mib: peak_rss_mib(),
        kernels,
        gpu_ms_per_step,
        host_cpu_ms,
        ab,
    })
}

/// The median of `xs` (sorted in place; the upper one of an even count).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One matmul shape's throughput on the wgpu adapter.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MatmulResult {
    pub shape: String,
    pub what: String,
    /// The kernel: `wgsl-64` / `wgsl-128` (scalar kernels by tile edge), `wgsl-v4-RxC[/kS]`
    /// (the vec4 kernel's R × C tile, K split in S), `wgsl-auto` (the backend's choice),
    /// `candle` (cuBLAS on CUDA).
    #[serde(default)]
    pub kernel: String,
    pub median_ms: f64,
    pub gflops: f64,
}

/// Square shapes and the MiniLM training shapes (batch 8 × 128 tokens: projections, the MLP,
/// the weight-gradient product `dYᵀ X` and attention scores). `big` adds 2048³, where GPUs
/// approach their peak (seconds per product on a software adapter, so left out there).
fn matmul_shapes(big: bool) -> Vec<(&'static str, Dims)> {
    let d = |batch, m, n, k, ta, tb, b_shared| Dims {
        batch,
        m,
        n,
        k,
        ta,
        tb,
        b_shared,
    };
    let mut shapes = vec![
        ("square 256", d(1, 256, 256, 256, false, false, true)),
        ("square 512", d(1, 512, 512, 512, false, false, true)),
        ("square 1024", d(1, 1024, 1024, 1024, false, false, true)),
        (
            "x W^T: q/k/v/out (1024x384 · 384x384)",
            d(1, 1024, 384, 384, false, true, true),
        ),
        (
            "x W^T: MLP up (1024x384 · 1536x384)",
            d(1, 1024, 1536, 384, false, true, true),
        ),
        (
            "x W^T: MLP down (1024x1536 · 384x1536)",
            d(1, 1024, 384, 1536, false, true, true),
        ),
        (
            "dY^T X: weight grad (384x1024 · 1024x1536)",
            d(1, 384, 1536, 1024, true, false, true),
        ),
        (
            "attention scores (96 heads, 128x128x32)",
            d(96, 128, 128, 32, false, true, false),
        ),
    ];
    if big {
        shapes.insert(
            3,
            ("square 2048", d(1, 2048, 2048, 2048, false, false, true)),
        );
    }
    shapes
}

fn matmul_result(what: &str, kernel: &str, s: &Dims, secs: f64) -> MatmulResult {
    MatmulResult {
        shape: format!("{}x{}x{}x{}", s.batch, s.m, s.n, s.k),
        what: what.to_string(),
        kernel: kernel.to_string(),
        median_ms: secs * 1e3,
        gflops: s.flops() / secs / 1e9,
    }
}

/// Matmul GFLOP/s on a candle device (`cpu`, `cuda`, `cuda:N`) at [`matmul_shapes`]: on CUDA
/// that is cuBLAS in full fp32 (candle leaves TF32 off), the baseline of the WGSL matmul.
/// Each sample times `reps` products then waits for the device; the median of `iters`
/// samples is reported.
pub fn candle_matmul(device: &str, iters: usize) -> anyhow::Result<Vec<MatmulResult>> {
    use candle_core::{DType, Tensor};
    use tunelab_core::Backend as _;
    let dev = crate::job::candle_device(device)?;
    let backend = tunelab_candle::Candle::new(dev.clone());
    let mut out = Vec::new();
    for (what, s) in matmul_shapes(dev.is_cuda()) {
        let (b, m, n, k) = (s.batch as usize, s.m as usize, s.n as usize, s.k as usize);
        // Stored as the training graph stores them; the backend's matmul transposes views.
        let a = if s.ta {
            Tensor::randn(0f32, 1.0, (b, k, m), &dev)?
        } else {
            Tensor::randn(0f32, 1.0, (b, m, k), &dev)?
        };
        let bb = if s.b_shared { 1 } else { b };
        let w = if s.tb {
            Tensor::randn(0f32, 1.0, (bb, n, k), &dev)?
        } else {
            Tensor::randn(0f32, 1.0, (bb, k, n), &dev)?
        };
        let w = if s.b_shared { w.squeeze(0)? } else { w };
        let a = if b == 1 { a.squeeze(0)? } else { a };
        anyhow::ensure!(a.dtype() == DType::F32);
        let reps = 20;
        let mut samples = Vec::new();
        for i in 0..iters + 1 {
            let start = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(backend.matmul(&a, &w, s.ta, s.tb)?);
            }
            dev.synchronize()?;
            if i > 0 {
                samples.push(start.elapsed().as_secs_f64() / reps as f64);
            }
        }
        samples.sort_by(f64::total_cmp);
        out.push(matmul_result(
            what,
            "candle",
            &s,
            samples[samples.len() / 2],
        ));
    }
    Ok(out)
}

/// WGSL matmul GFLOP/s at [`matmul_shapes`], on device-resident buffers: on GPUs the scalar
/// kernels, the vec4 kernel's tiles and K splits that its automatic choice picks among, and
/// that choice; on software adapters only the choice.
pub fn wgpu_matmul(
    iters: usize,
) -> anyhow::Result<(tunelab_wgpu::AdapterReport, Vec<MatmulResult>)> {
    use tunelab_wgpu::ops::matmul::{Tiling, Vec4Tile, bench};
    let ctx = pollster::block_on(tunelab_wgpu::Context::new(Default::default()))?;
    let software = ctx.report().device_type == "Cpu";
    let mut out = Vec::new();
    for (what, dims) in matmul_shapes(!software) {
        let tilings: &[(Tiling, &str)] = if software {
            &[(Tiling::Auto, "wgsl-auto")]
        } else {
            &[
                (Tiling::Small, "wgsl-64"),
                (Tiling::Big, "wgsl-128"),
                (
                    Tiling::Vec4 {
                        tile: Vec4Tile::T64,
                        splits: 1,
                    },
                    "wgsl-v4-64",
                ),
                (
                    Tiling::Vec4 {
                        tile: Vec4Tile::T128x64,
                        splits: 1,
                    },
                    "wgsl-v4-128x64",
                ),
                (
                    Tiling::Vec4 {
                        tile: Vec4Tile::T128x64,
                        splits: 2,
                    },
                    "wgsl-v4-128x64/k2",
                ),
                (
                    Tiling::Vec4 {
                        tile: Vec4Tile::T128,
                        splits: 1,
                    },
                    "wgsl-v4-128",
                ),
                (
                    Tiling::Vec4 {
                        tile: Vec4Tile::T128,
                        splits: 2,
                    },
                    "wgsl-v4-128/k2",
                ),
                (
                    Tiling::Vec4 {
                        tile: Vec4Tile::T128,
                        splits: 3,
                    },
                    "wgsl-v4-128/k3",
                ),
                (
                    Tiling::Vec4 {
                        tile: Vec4Tile::T128Deep,
                        splits: 4,
                    },
                    "wgsl-v4-128d/k4",
                ),
                (Tiling::Auto, "wgsl-auto"),
            ]
        };
        for &(tiling, kernel) in tilings {
            let secs = match bench(&ctx, &dims, tiling, iters) {
                // A kernel this device cannot run (e.g. more workgroup memory than it has).
                Err(tunelab_wgpu::WgpuError::Shape(e)) => {
                    eprintln!("{kernel}: skipped: {e}");
                    continue;
                }
                r => r?,
            };
            out.push(matmul_result(what, kernel, &dims, secs));
        }
    }
    Ok((ctx.report().clone(), out))
}
