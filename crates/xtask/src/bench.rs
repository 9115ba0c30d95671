//! `cargo xtask bench`: the training-step benchmark, written to `docs/benchmarks.md`.
//!
//! Runs `tunelab bench` (release build) on the MiniLM shape for every PEFT method and, with
//! `--vs-torch`, PyTorch + PEFT on the same shape, data and thread count in the same run
//! (`tests/bench/torch_step.py`, in the venv `cargo xtask fixtures` sets up).

use crate::sh::{self, cmd, root};
use anyhow::Context;
use std::collections::BTreeMap;

const BATCH: usize = 8;
const SEQ: usize = 128;
const STEPS: usize = 10;
const WARMUP: usize = 2;

pub fn run(vs_torch: bool) -> anyhow::Result<()> {
    crate::assets::ensure(false)?;
    let out = root().join("target/bench-tunelab.jsonl");
    std::fs::create_dir_all(root().join("target"))?;
    let mut c = cmd(
        "cargo",
        &[
            "run",
            "--release",
            "--quiet",
            "-p",
            "tunelab-cli",
            "--",
            "bench",
        ],
    );
    c.args([
        "--batch",
        &BATCH.to_string(),
        "--seq",
        &SEQ.to_string(),
        "--steps",
        &STEPS.to_string(),
        "--warmup",
        &WARMUP.to_string(),
    ])
    .arg("--json-out")
    .arg(&out)
    .current_dir(root());
    sh::run(&mut c)?;
    let mut ours = parse(&std::fs::read_to_string(&out)?)?;
    // WGSL matmul throughput on this machine's adapter (only the matmuls: a MiniLM step on a
    // software adapter takes minutes; GPU step timings are in docs/gpu-benchmarks.md).
    let wgpu_out = root().join("target/bench-wgpu.jsonl");
    let mut w = cmd(
        "cargo",
        &[
            "run",
            "--release",
            "--quiet",
            "-p",
            "tunelab-cli",
            "--",
            "bench",
        ],
    );
    w.args(["--wgpu", "--wgpu-only", "--methods", "none", "--steps", "3"])
        .arg("--json-out")
        .arg(&wgpu_out)
        .current_dir(root());
    sh::run(&mut w)?;
    ours.extend(parse(&std::fs::read_to_string(&wgpu_out)?)?);

    let torch = if vs_torch {
        crate::fixtures::ensure_venv()?;
        let python = crate::fixtures::venv().join("bin/python");
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut c = cmd(
            &python.to_string_lossy(),
            &[
                "tests/bench/torch_step.py",
                "assets/models/all-MiniLM-L6-v2",
            ],
        );
        c.args([threads, BATCH, SEQ, STEPS, WARMUP].map(|n| n.to_string()))
            .arg("full,bitfit,lora,prompt")
            .current_dir(root())
            .env("HF_HUB_OFFLINE", "1");
        eprintln!("+ {}", sh::show(&c));
        let o = c.output().context("running the PyTorch baseline")?;
        anyhow::ensure!(
            o.status.success(),
            "PyTorch baseline failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Some(parse(&String::from_utf8_lossy(&o.stdout))?)
    } else {
        None
    };
    let report = render(&ours, torch.as_ref());
    let path = root().join("docs/benchmarks.md");
    std::fs::write(&path, &report)?;
    println!("{report}\nwritten to {}", path.display());
    Ok(())
}

type Rows = BTreeMap<String, serde_json::Value>;

fn parse(jsonl: &str) -> anyhow::Result<Rows> {
    jsonl
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            let key = match v.get("wgpu_matmul") {
                Some(m) => format!("~wgpu {}", m["what"].as_str().unwrap_or("?")),
                None => v["method"].as_str().unwrap_or("?").to_string(),
            };
            Ok((key, v))
        })
        .collect()
}

fn render(ours: &Rows, torch: Option<&Rows>) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut s = format!(
        "# Benchmarks\n\nProduced by `cargo xtask bench{}`; do not edit by hand.\n\n## Training step, MiniLM shape, candle CPU backend\n\nall-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads) with a 2-class sequence-classification head, batch {BATCH} × sequence {SEQ}, one full step (forward, loss, backward, global-norm clipping, AdamW). Median and minimum of {STEPS} steps after {WARMUP} warm-up steps; peak resident memory of the process that ran the method. Machine: {cpu}, {threads} threads.\n\n",
        if torch.is_some() { " --vs-torch" } else { "" }
    );
    s.push_str("| method | trainable | median ms | min ms | tokens/s | peak MiB |");
    if torch.is_some() {
        s.push_str(" PyTorch median ms | ours / PyTorch |");
    }
    s.push('\n');
    s.push_str("|---|---:|---:|---:|---:|---:|");
    if torch.is_some() {
        s.push_str("---:|---:|");
    }
    s.push('\n');
    for (m, r) in ours.iter().filter(|(k, _)| !k.starts_with("~wgpu")) {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        s.push_str(&format!(
            "| {m} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r["trainable"],
            f("median_ms"),
            f("min_ms"),
            f("tokens_per_s"),
            f("peak_rss_mib")
        ));
        if let Some(t) = torch {
            let tm = t
                .get(m)
                .and_then(|v| v["median_ms"].as_f64())
                .unwrap_or(f64::NAN);
            s.push_str(&format!(" {tm:.0} | {:.2}× |", f("median_ms") / tm));
        }
        s.push('\n');
    }
    if let Some(t) = torch {
        let version = t
            .values()
            .next()
            .and_then(|v| v["torch"].as_str())
            .unwrap_or("?");
        s.push_str(&format!("\nPyTorch {version} + PEFT on the same shape, data and thread count, measured in the same run (`tests/bench/torch_step.py`).\n"));
        let ratios: Vec<f64> = ours
            .iter()
            .filter(|(k, _)| !k.starts_with("~wgpu"))
            .filter_map(|(m, r)| Some(r["median_ms"].as_f64()? / t.get(m)?["median_ms"].as_f64()?))
            .collect();
        let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0f64), |(lo, hi), r| {
            (lo.min(*r), hi.max(*r))
        });
        s.push_str(&format!(
            "\nTarget: a step at most 0.80× PyTorch's time. Now: {lo:.2}× to {hi:.2}× — {}.\n",
            if hi <= 0.8 { "met" } else { "not met" }
        ));
    }
    let wgpu: Vec<&serde_json::Value> = ours
        .iter()
        .filter(|(k, _)| k.starts_with("~wgpu"))
        .map(|(_, v)| v)
        .collect();
    if let Some(first) = wgpu.first() {
        s.push_str(&format!(
            "\n## WGSL matmul, wgpu on this machine's adapter ({})\n\nMedian time per matmul on device-resident buffers, many dispatches per submission so submission latency is not counted (`tunelab bench --wgpu`). Without a GPU the adapter is lavapipe (software Vulkan), whose numbers only show the kernel runs; GPU numbers are in `docs/gpu-benchmarks.md`.\n\n| shape | B×M×N×K | median ms | GFLOP/s |\n|---|---|---:|---:|\n",
            first["adapter"].as_str().unwrap_or("?")
        ));
        for v in wgpu {
            let m = &v["wgpu_matmul"];
            s.push_str(&format!(
                "| {} | {} | {:.2} | {:.1} |\n",
                m["what"].as_str().unwrap_or("?"),
                m["shape"].as_str().unwrap_or("?"),
                m["median_ms"].as_f64().unwrap_or(f64::NAN),
                m["gflops"].as_f64().unwrap_or(f64::NAN)
            ));
        }
    }
    s
}
