//! `cargo xtask setup`: everything the build and the tests need, from the registries only.
//!
//! Each step first checks whether its piece is present at the right version and does nothing
//! if so, so re-running on a ready machine takes seconds.

use crate::sh::run as sh_run;
use crate::sh::{cmd, output, root};
use anyhow::{Context, bail};

/// Debian packages: headless Chromium with WebGPU, its WebDriver, Mesa's lavapipe (software
/// Vulkan) for native wgpu tests, and binaryen's wasm-opt.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "chromium",
    "chromium-driver",
    "mesa-vulkan-drivers",
    "binaryen",
];
/// Trunk 0.22 needs a newer rustc than 1.95.
pub const TRUNK_VERSION: &str = "0.21.14";
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

pub fn run() -> anyhow::Result<()> {
    debian_packages()?;
    wasm_target()?;
    rust_src()?;
    wasm_bindgen_cli()?;
    trunk()?;
    playwright()?;
    eprintln!("setup: everything is installed");
    Ok(())
}

/// True when every step would do nothing (used by `serve` and `test` to skip setup quickly).
pub fn is_complete() -> bool {
    missing_debian_packages().is_empty()
        && has_wasm_target()
        && has_rust_src()
        && wasm_bindgen_installed().as_deref() == wasm_bindgen_version().ok().as_deref()
        && trunk_installed().as_deref() == Some(TRUNK_VERSION)
        && playwright_installed()
}

fn missing_debian_packages() -> Vec<&'static str> {
    DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(&mut cmd("dpkg-query", &["-W", "-f=${Status}", p])).as_deref()
                != Some("install ok installed")
        })
        .collect()
}

fn debian_packages() -> anyhow::Result<()> {
    let missing = missing_debian_packages();
    if missing.is_empty() {
        eprintln!(
            "setup: Debian packages present ({})",
            DEBIAN_PACKAGES.join(", ")
        );
        return Ok(());
    }
    let is_root = output(&mut cmd("id", &["-u"])).as_deref() == Some("0");
    let prefix: &[&str] = if is_root { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let all: Vec<&str> = prefix.iter().chain(args).copied().collect();
        let mut c = cmd(all[0], &all[1..]);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    sh_run(&mut apt(&["apt-get", "update", "-q"]))?;
    let mut args = vec!["apt-get", "install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    sh_run(&mut apt(&args)).context("installing Debian packages (needs root or sudo)")
}

fn has_wasm_target() -> bool {
    output(&mut cmd("rustup", &["target", "list", "--installed"]))
        .is_some_and(|s| s.lines().any(|l| l.trim() == WASM_TARGET))
}

fn wasm_target() -> anyhow::Result<()> {
    if has_wasm_target() {
        eprintln!("setup: Rust target {WASM_TARGET} present");
        return Ok(());
    }
    sh_run(&mut cmd("rustup", &["target", "add", WASM_TARGET]))
}

fn has_rust_src() -> bool {
    output(&mut cmd("rustup", &["component", "list", "--installed"]))
        .is_some_and(|s| s.lines().any(|l| l.trim().starts_with("rust-src")))
}

/// The standard library's source: the threaded web worker rebuilds std with atomics.
fn rust_src() -> anyhow::Result<()> {
    if has_rust_src() {
        eprintln!("setup: Rust component rust-src present");
        return Ok(());
    }
    sh_run(&mut cmd("rustup", &["component", "add", "rust-src"]))
}

/// The wasm-bindgen version pinned in the workspace `Cargo.toml`: the one place it is written.
pub fn wasm_bindgen_version() -> anyhow::Result<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("wasm-bindgen = \"="))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_string)
        .context("Cargo.toml must pin `wasm-bindgen = \"=X.Y.Z\"` in [workspace.dependencies]")
}

fn wasm_bindgen_installed() -> Option<String> {
    output(&mut cmd("wasm-bindgen", &["--version"]))
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
}

fn wasm_bindgen_cli() -> anyhow::Result<()> {
    let want = wasm_bindgen_version()?;
    if wasm_bindgen_installed().as_deref() == Some(want.as_str()) {
        eprintln!("setup: wasm-bindgen-cli {want} present");
        return Ok(());
    }
    // Not `--locked`: its lockfile pins a crate version the registry here does not serve.
    sh_run(&mut cmd(
        "cargo",
        &["install", "wasm-bindgen-cli", "--version", &want, "--force"],
    ))
}

fn trunk_installed() -> Option<String> {
    output(&mut cmd("trunk", &["--version"]))
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
}

fn trunk() -> anyhow::Result<()> {
    if trunk_installed().as_deref() == Some(TRUNK_VERSION) {
        eprintln!("setup: trunk {TRUNK_VERSION} present");
        return Ok(());
    }
    sh_run(&mut cmd(
        "cargo",
        &[
            "install",
            "trunk",
            "--version",
            TRUNK_VERSION,
            "--locked",
            "--force",
        ],
    ))
}

/// The playwright-core version pinned in `tests/e2e/package.json`.
fn playwright_pinned() -> anyhow::Result<String> {
    let path = root().join("tests/e2e/package.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    json["devDependencies"]["playwright-core"]
        .as_str()
        .map(str::to_string)
        .with_context(|| {
            format!(
                "{}: devDependencies.playwright-core missing",
                path.display()
            )
        })
}

fn playwright_installed() -> bool {
    let path = root().join("tests/e2e/node_modules/playwright-core/package.json");
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    playwright_pinned().is_ok_and(|want| json["version"].as_str() == Some(want.as_str()))
}

fn playwright() -> anyhow::Result<()> {
    if playwright_installed() {
        eprintln!("setup: playwright-core present");
        return Ok(());
    }
    if output(&mut cmd("npm", &["--version"])).is_none() {
        bail!("npm is missing: install Node.js (Debian: apt-get install nodejs npm)");
    }
    // playwright-core never downloads a browser; the tests use Debian's /usr/bin/chromium.
    let mut c = cmd("npm", &["ci", "--no-audit", "--no-fund"]);
    c.current_dir(root().join("tests/e2e"));
    sh_run(&mut c)
}
