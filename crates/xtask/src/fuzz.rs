//! `cargo xtask fuzz`: coverage-guided fuzzing of the readers of untrusted files with
//! libFuzzer, on stable Rust.
//!
//! Coverage comes from rustc's own sanitizer-coverage pass (`-C passes=sancov-module` with
//! LLVM's `-sanitizer-coverage-*` options), which stable rustc accepts; `libfuzzer-sys`
//! compiles libFuzzer with the system's C++ compiler. No sanitizer runtime is linked: a crash
//! is a panic (a broken contract in `tunelab-fuzz`, an overflow — overflow checks and debug
//! assertions are on — or an out-of-bounds index), a stall past `-timeout`, or memory past
//! `-rss_limit_mb`.
//!
//! Seeds are real files: the test fixtures' weights, the sample datasets' first lines, and
//! the checkpoints, configs and exports of three one-step runs (prompt tuning, BitFit, LoRA)
//! that the CLI trains here. The growing corpus stays in the target folder between runs;
//! crashing inputs are written to `crates/tunelab-fuzz/regressions/<target>/`, where
//! `cargo test` runs them for good. The report goes to `docs/fuzzing.md`.

use crate::sh::{cmd, output, root, run, target_dir};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Minutes per target.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Only this target (safetensors, checkpoint, data, config, import, zip).
    #[arg(long)]
    target: Option<String>,
    /// Targets fuzzed at once (one core each).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Do not write docs/fuzzing.md (a quick local check).
    #[arg(long)]
    no_report: bool,
}

const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks -Cdebuginfo=1";

/// What one target's run printed at its end.
#[derive(Debug, Default)]
struct Outcome {
    name: String,
    seconds: f64,
    executions: u64,
    coverage: u64,
    corpus: u64,
    peak_rss_mb: u64,
    crashes: Vec<String>,
}

pub fn main(opts: Options) -> anyhow::Result<()> {
    let names: Vec<&str> = tunelab_fuzz::TARGETS.iter().map(|t| t.0).collect();
    let chosen: Vec<&str> = match &opts.target {
        Some(t) if names.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!(
            "unknown fuzz target `{t}`; expected one of {}",
            names.join(", ")
        ),
        None => names.clone(),
    };
    if opts.minutes.is_nan() || opts.minutes <= 0.0 {
        bail!("--minutes must be more than 0");
    }
    crate::assets::ensure(false)?;
    let work = target_dir().join("fuzz");
    let seeds = work.join("seeds");
    make_seeds(&work, &seeds)?;
    let bins = build(&work)?;

    let started = Instant::now();
    let mut outcomes = Vec::new();
    for batch in chosen.chunks(opts.jobs.max(1)) {
        let children: Vec<_> = batch
            .iter()
            .map(|t| start(&bins, &work, &seeds, t, opts.minutes))
            .collect::<anyhow::Result<_>>()?;
        for (name, child, log, t0) in children {
            let status = child.wait_with_output()?.status;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut o = outcome(&name, &text, t0.elapsed().as_secs_f64());
            o.crashes = crashes_since(&name, t0)?;
            if !status.success() && o.crashes.is_empty() {
                bail!(
                    "fuzz-{name} failed ({status}) without writing a crash; see {}",
                    log.display()
                );
            }
            eprintln!(
                "fuzz {name}: {} executions, coverage {}, corpus {}, {} crash(es)",
                o.executions,
                o.coverage,
                o.corpus,
                o.crashes.len()
            );
            outcomes.push(o);
        }
    }
    if !opts.no_report {
        report(
            &outcomes,
            opts.minutes,
            opts.jobs,
            started.elapsed().as_secs(),
        )?;
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.crashes.is_empty())
        .map(|o| o.name.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "crashes in {}: the inputs are in crates/tunelab-fuzz/regressions/",
            crashed.join(", ")
        );
    }
    Ok(())
}

fn regressions(name: &str) -> PathBuf {
    root().join("crates/tunelab-fuzz/regressions").join(name)
}

fn start(
    bins: &Path,
    work: &Path,
    seeds: &Path,
    name: &str,
    minutes: f64,
) -> anyhow::Result<(String, std::process::Child, PathBuf, Instant)> {
    let corpus = work.join("corpus").join(name);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(regressions(name))?;
    let log = work.join(format!("{name}.log"));
    let mut c = Command::new(bins.join(format!("fuzz-{name}")));
    c.arg(format!(
        "-max_total_time={}",
        (minutes * 60.0).round() as u64
    ))
    .arg("-rss_limit_mb=4096")
    .arg("-timeout=30")
    .arg("-max_len=1048576")
    .arg("-print_final_stats=1")
    .arg(format!("-artifact_prefix={}/", regressions(name).display()))
    .arg(&corpus)
    .arg(seeds.join(name))
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log)?);
    eprintln!("+ {}", crate::sh::show(&c));
    let child = c.spawn().with_context(|| format!("starting fuzz-{name}"))?;
    Ok((name.to_string(), child, log, Instant::now()))
}

/// Reads libFuzzer's final statistics and its last status line (`#N DONE cov: C ... corp: K`).
fn outcome(name: &str, log: &str, seconds: f64) -> Outcome {
    let stat = |key: &str| {
        log.lines()
            .filter_map(|l| l.strip_prefix(key))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .next_back()
            .unwrap_or(0)
    };
    let field = |line: &str, key: &str| -> u64 {
        let mut it = line.split_whitespace();
        while let Some(w) = it.next() {
            if w == key {
                let v = it.next().unwrap_or("0");
                return v.split('/').next().unwrap_or("0").parse().unwrap_or(0);
            }
        }
        0
    };
    let last = log
        .lines()
        .rfind(|l| l.starts_with('#') && l.contains("cov:"))
        .unwrap_or("");
    Outcome {
        name: name.to_string(),
        seconds,
        executions: stat("stat::number_of_executed_units:"),
        coverage: field(last, "cov:"),
        corpus: field(last, "corp:"),
        peak_rss_mb: stat("stat::peak_rss_mb:"),
        crashes: Vec::new(),
    }
}

/// Inputs libFuzzer wrote into the target's regressions folder during this run (it names
/// them `crash-`, `timeout-`, `oom-` or `slow-unit-` and the input's hash).
fn crashes_since(name: &str, since: Instant) -> anyhow::Result<Vec<String>> {
    let age = since.elapsed();
    let mut out = Vec::new();
    for e in std::fs::read_dir(regressions(name))? {
        let e = e?;
        let file = e.file_name().to_string_lossy().to_string();
        if !["crash-", "timeout-", "oom-", "slow-unit-", "leak-"]
            .iter()
            .any(|p| file.starts_with(p))
        {
            continue;
        }
        let fresh = e
            .metadata()?
            .modified()?
            .elapsed()
            .map(|a| a <= age)
            .unwrap_or(true);
        if fresh {
            out.push(file);
        }
    }
    out.sort();
    Ok(out)
}

/// Builds the instrumented targets into their own target folder (the flags differ from every
/// other build, so sharing one would rebuild both each time).
fn build(work: &Path) -> anyhow::Result<PathBuf> {
    let dir = work.join("target");
    // With an explicit --target, RUSTFLAGS reach only the target's code, not build scripts
    // and proc macros (which must not be instrumented: nothing links libFuzzer into them).
    let host = output(&mut cmd("rustc", &["-vV"]))
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        })
        .context("reading the host triple from `rustc -vV`")?;
    let mut c = cmd(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "tunelab-fuzz",
            "--features",
            "fuzz",
            "--bins",
            "--target",
            &host,
        ],
    );
    c.current_dir(root())
        .env("CARGO_TARGET_DIR", &dir)
        .env("RUSTFLAGS", RUSTFLAGS);
    run(&mut c)?;
    Ok(dir.join(host).join("release"))
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes).with_context(|| format!("writing {name}"))
}

/// Writes every target's seeds under `seeds/<target>/`.
fn make_seeds(work: &Path, seeds: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(seeds);
    let fixtures = root().join("tests/fixtures");
    let st = seeds.join("safetensors");
    for f in [
        "tiny-bert/model.safetensors",
        "tiny-roberta/model.safetensors",
        "parity-bert-bitfit.safetensors",
    ] {
        put(&st, &f.replace('/', "-"), &std::fs::read(fixtures.join(f))?)?;
    }

    // Data: the sample datasets' first lines, in their own formats.
    let data = seeds.join("data");
    let datasets = crate::assets::assets_dir().join("datasets");
    let mut n = 0;
    for set in std::fs::read_dir(&datasets)? {
        for file in std::fs::read_dir(set?.path())? {
            let path = file?.path();
            let name = path.to_string_lossy().to_string();
            let Some(format) = tunelab_core::data::Format::from_path(&name) else {
                continue;
            };
            let pick = match format {
                tunelab_core::data::Format::Jsonl => 0u8,
                tunelab_core::data::Format::Csv => 1,
                tunelab_core::data::Format::Conll => 2,
                tunelab_core::data::Format::Text => 3,
            };
            let text = std::fs::read_to_string(&path)?;
            let head: String = text.lines().take(24).flat_map(|l| [l, "\n"]).collect();
            let mut bytes = vec![pick];
            bytes.extend_from_slice(head.as_bytes());
            put(&data, &format!("dataset-{n}"), &bytes)?;
            n += 1;
        }
    }
    for (i, s) in [
        "\u{1}text,label\n\"a, quoted\nfield\",pos\nplain,neg\n",
        "\u{0}{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\", \"B-X\"]}\n",
        "\u{2}EU B-ORG\nrejects O\n\nGerman B-MISC\n",
    ]
    .iter()
    .enumerate()
    {
        put(&data, &format!("handwritten-{i}"), s.as_bytes())?;
    }

    // Checkpoints, configs and exports of real one-step runs.
    let runs = work.join("seed-runs");
    let _ = std::fs::remove_dir_all(&runs);
    std::fs::create_dir_all(&runs)?;
    let csv = runs.join("d.csv");
    std::fs::write(
        &csv,
        "text,label\ngood film,pos\nbad film,neg\ngreat,pos\nawful,neg\n",
    )?;
    run(cmd("cargo", &["build", "-p", "tunelab-cli"]).current_dir(root()))?;
    let bin = target_dir().join("debug/tunelab");
    let config = seeds.join("config");
    put(
        &config,
        "tiny-bert-config.json",
        &[
            &[2u8][..],
            &std::fs::read(fixtures.join("tiny-bert/config.json"))?,
        ]
        .concat(),
    )?;
    put(
        &config,
        "train.toml",
        b"\0task = \"classification\"\ntrain_file = \"d.csv\"\nlr = 0.001\nmax_steps = 4\n\n[method]\nmethod = \"lora\"\nr = 4\n",
    )?;
    for (method, extra) in [
        ("prompt", &["--prompt-tokens", "2"][..]),
        ("bitfit", &[][..]),
        ("lora", &["--lora-r", "1", "--lora-targets", "query"][..]),
    ] {
        let out = runs.join(method);
        let mut c = Command::new(&bin);
        c.args(["train", "--task", "classification", "--method", method])
            .arg("--train-file")
            .arg(&csv)
            .args(["--max-len", "8", "--batch-size", "2", "--max-steps", "1"])
            .args(extra)
            .arg("--output-dir")
            .arg(&out)
            .env("TUNELAB_ASSETS", crate::assets::assets_dir())
            .stdout(Stdio::null());
        run(&mut c)?;
        put(
            &seeds.join("checkpoint"),
            &format!("{method}.safetensors"),
            &std::fs::read(out.join("checkpoint/checkpoint.safetensors"))?,
        )?;
        put(
            &config,
            &format!("{method}-train_config.json"),
            &[&[1u8][..], &std::fs::read(out.join("train_config.json"))?].concat(),
        )?;
        let mut files = BTreeMap::new();
        for name in tunelab_fuzz::EXPORT_FILES {
            if let Ok(b) = std::fs::read(out.join("final").join(name)) {
                files.insert(name.to_string(), b);
            }
        }
        put(
            &seeds.join("import"),
            &format!("{method}-export"),
            &tunelab_fuzz::join_files(&files),
        )?;
        let packed: Vec<(String, Vec<u8>)> = files.into_iter().collect();
        put(
            &seeds.join("zip"),
            &format!("{method}-export.zip"),
            &tunelab_core::zipfile::pack(&packed).map_err(anyhow::Error::msg)?,
        )?;
        if method == "lora" {
            put(
                &st,
                "lora-adapter.safetensors",
                &std::fs::read(out.join("final/adapter_model.safetensors"))?,
            )?;
        }
    }
    Ok(())
}

fn report(outcomes: &[Outcome], minutes: f64, jobs: usize, wall: u64) -> anyhow::Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let rustc = output(&mut cmd("rustc", &["--version"])).unwrap_or_default();
    let date = output(&mut cmd("date", &["-u", "+%Y-%m-%d"])).unwrap_or_default();
    let mut md = String::from(
        "# Fuzzing report\n\n\
         Written by `cargo xtask fuzz` (see `crates/xtask/src/fuzz.rs` for how it builds and\n\
         runs, `crates/tunelab-fuzz/src/lib.rs` for what each target checks). Each target is\n\
         libFuzzer on stable Rust with rustc's sanitizer-coverage pass, overflow checks and\n\
         debug assertions on; a crash is a panic, a broken contract (an error that does not\n\
         name its file, a tensor whose values disagree with its shape, a valid config that\n\
         does not read back unchanged), 30 s on one input, or 4 GiB of memory.\n\n",
    );
    md.push_str(&format!(
        "Each row is the latest run of its target: this one on {date}, {cpu}, {rustc}; \
         {minutes} min per target, {jobs} at a time on 2 cores ({wall} s in all).\n\n"
    ));
    md.push_str(
        "| target | what it reads | run on | seconds | executions | exec/s | coverage (edges) | corpus | peak RSS MiB | crashes |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let path = root().join("docs/fuzzing.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    // Rows of targets not run this time stay as they were.
    let old_rows: BTreeMap<String, String> = old
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| target"))
        .filter_map(|l| Some((l.split('|').nth(1)?.trim().to_string(), l.to_string())))
        .collect();
    for (name, _) in tunelab_fuzz::TARGETS {
        let Some(o) = outcomes.iter().find(|o| o.name == *name) else {
            if let Some(row) = old_rows.get(*name) {
                md.push_str(row);
                md.push('\n');
            }
            continue;
        };
        let what = match o.name.as_str() {
            "safetensors" => "model weights (`safetensors_io::read`, metadata, integer buffers)",
            "checkpoint" => "training checkpoints (`checkpoint::read`)",
            "data" => "JSONL, CSV, CoNLL and text data (`decode_text`, `parse`)",
            "config" => "train configs (TOML, JSON; write/read round trip), model `config.json`",
            "import" => "exports (`export::import`) from their separate files",
            "zip" => "zipped exports as the web app imports them (`zipfile::unpack`, import)",
            _ => "",
        };
        md.push_str(&format!(
            "| {} | {what} | {date} | {:.0} | {} | {:.0} | {} | {} | {} | {} |\n",
            o.name,
            o.seconds,
            o.executions,
            o.executions as f64 / o.seconds.max(1e-9),
            o.coverage,
            o.corpus,
            o.peak_rss_mb,
            if o.crashes.is_empty() {
                "0".to_string()
            } else {
                format!("{} ({})", o.crashes.len(), o.crashes.join(", "))
            }
        ));
    }
    // Hand-written findings below the generated part are kept.
    let keep = old
        .split_once("\n## Findings")
        .map(|(_, rest)| format!("\n## Findings{rest}"))
        .unwrap_or_default();
    std::fs::write(&path, format!("{md}{keep}"))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
