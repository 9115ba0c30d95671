//! `cargo xtask test`: every test group, one summary line, non-zero exit on any failure.
//!
//! Groups:
//! - `native`: unit, integration and doc tests of the workspace on the CPU;
//! - `wgpu`: the WebGPU backend natively on Vulkan (Mesa's lavapipe when there is no GPU);
//! - `wasm`: every wasm crate builds for `wasm32-unknown-unknown`, and wasm-bindgen tests run
//!   in headless Chromium with WebGPU (SwiftShader);
//! - `e2e`: the built web app, served locally, driven by Playwright in Chromium.

use crate::serve::{self, Server};
use crate::sh::{cmd, root, show};
use crate::{assets, setup};
use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct Groups {
    /// Native unit, integration and doc tests.
    #[arg(long)]
    native: bool,
    /// wgpu tests on Vulkan (lavapipe).
    #[arg(long)]
    wgpu: bool,
    /// wasm tests in headless Chromium.
    #[arg(long)]
    wasm: bool,
    /// Browser end-to-end tests of the served app.
    #[arg(long)]
    e2e: bool,
}

/// Tests counted from a runner's output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
}

impl Counts {
    /// Adds what one output line reports: cargo's `test result: ... N passed; M failed` or
    /// node's `# pass N` / `# fail M` (TAP) and `ℹ pass N` (spec reporter).
    pub fn scan(&mut self, line: &str) {
        let number_before = |key: &str| {
            line.split(';').find_map(|part| {
                part.trim()
                    .strip_suffix(key)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
        };
        if line.starts_with("test result:") {
            self.passed += number_before("passed").unwrap_or(0);
            self.failed += number_before("failed").unwrap_or(0);
            return;
        }
        let rest = line.trim_start_matches(['#', 'ℹ', ' ']);
        if line.starts_with('#') || line.starts_with('ℹ') {
            if let Some(n) = rest
                .strip_prefix("pass ")
                .and_then(|n| n.trim().parse::<u64>().ok())
            {
                self.passed += n;
            } else if let Some(n) = rest
                .strip_prefix("fail ")
                .and_then(|n| n.trim().parse::<u64>().ok())
            {
                self.failed += n;
            }
        }
    }
}

/// Runs `c`, echoing its stdout while counting test results.
fn counted(c: &mut Command, counts: &mut Counts) -> anyhow::Result<()> {
    eprintln!("+ {}", show(c));
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", show(c)))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.unwrap_or_default();
            println!("{line}");
            counts.scan(&line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` failed with {status}", show(c));
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Command {
    let mut c = cmd("cargo", args);
    // Assets were ensured above: a test that needs them must not skip silently.
    c.current_dir(root()).env("TUNELAB_REQUIRE_ASSETS", "1");
    c
}

fn native(counts: &mut Counts) -> anyhow::Result<()> {
    counted(
        &mut cargo(&["test", "--workspace", "--exclude", "tunelab-wgpu"]),
        counts,
    )
}

fn wgpu(counts: &mut Counts) -> anyhow::Result<()> {
    let mut c = cargo(&["test", "-p", "tunelab-wgpu"]);
    c.env("WGPU_BACKEND", "vulkan")
        .env("TUNELAB_REQUIRE_ADAPTER", "1")
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into()),
        );
    counted(&mut c, counts)
}

fn wasm(counts: &mut Counts) -> anyhow::Result<()> {
    let target = setup::WASM_TARGET;
    crate::sh::run(&mut cargo(&[
        "build",
        "--target",
        target,
        "-p",
        "tunelab-core",
        "-p",
        "tunelab-candle",
        "-p",
        "tunelab-wgpu",
        "-p",
        "tunelab-web",
    ]))?;
    let mut c = cargo(&[
        "test",
        "--target",
        target,
        "-p",
        "tunelab-wgpu",
        "--test",
        "web_adapter",
        "-p",
        "tunelab-candle",
        "--test",
        "wasm_cpu",
    ]);
    c.env("CHROMEDRIVER", "/usr/bin/chromedriver")
        .env(
            "WASM_BINDGEN_TEST_WEBDRIVER_JSON",
            root().join("tests/webdriver.json"),
        )
        .env("WASM_BINDGEN_TEST_TIMEOUT", "300");
    counted(&mut c, counts)
}

fn e2e(counts: &mut Counts) -> anyhow::Result<()> {
    assets::ensure(false)?;
    serve::build_web()?;
    let server = Server::start(0)?;
    let out_dir = root().join("tests/e2e/output");
    std::fs::create_dir_all(&out_dir)?;
    let mut c = cmd("node", &["--test", "--test-reporter=tap", "tests/e2e/"]);
    c.current_dir(root())
        .env("TUNELAB_URL", server.url())
        .env("TUNELAB_E2E_OUTPUT", &out_dir);
    let result = counted(&mut c, counts);
    server.stop();
    result
}

type GroupFn = fn(&mut Counts) -> anyhow::Result<()>;

pub fn run(groups: Groups) -> anyhow::Result<()> {
    let all = !(groups.native || groups.wgpu || groups.wasm || groups.e2e);
    if !setup::is_complete() {
        setup::run()?;
    }
    // The model and sample data (from the download cache when present): native, wgpu and
    // end-to-end tests use the real all-MiniLM-L6-v2.
    assets::ensure(false)?;
    let plan: Vec<(&str, GroupFn)> = [
        ("native", groups.native, native as GroupFn),
        ("wgpu", groups.wgpu, wgpu),
        ("wasm", groups.wasm, wasm),
        ("e2e", groups.e2e, e2e),
    ]
    .into_iter()
    .filter(|(_, chosen, _)| all || *chosen)
    .map(|(name, _, f)| (name, f))
    .collect();

    let mut total = Counts::default();
    let mut lines = Vec::new();
    let mut failed_groups = Vec::new();
    for (name, f) in plan {
        let started = Instant::now();
        let mut counts = Counts::default();
        let result = f(&mut counts);
        let secs = started.elapsed().as_secs();
        let verdict = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                failed_groups.push(name);
                format!("FAILED: {e:#}")
            }
        };
        lines.push(format!(
            "  {name:<7} {:>4} passed {:>3} failed  {secs:>5} s  {verdict}",
            counts.passed, counts.failed
        ));
        total.passed += counts.passed;
        total.failed += counts.failed;
    }
    println!("\nxtask test summary:");
    for l in &lines {
        println!("{l}");
    }
    // A group that failed without a failing test (a build error, say) still counts as one.
    let failed = total.failed.max(failed_groups.len() as u64);
    println!("{} passed, {} failed", total.passed, failed);
    if !failed_groups.is_empty() {
        bail!("test groups failed: {}", failed_groups.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn counts_cargo_and_node_summaries() {
        let mut c = Counts::default();
        c.scan("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        c.scan("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        c.scan("# pass 4");
        c.scan("# fail 1");
        c.scan("ℹ pass 2");
        c.scan("running 12 tests");
        c.scan("# Subtest: pass 9");
        assert_eq!(
            c,
            Counts {
                passed: 21,
                failed: 3
            }
        );
    }
}
