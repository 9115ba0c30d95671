//! `cargo xtask fixtures`: regenerate `tests/fixtures/*.safetensors` with PyTorch.
//!
//! Creates (once) a venv at `~/.cache/tunelab/torch-venv` with torch, transformers, peft and
//! safetensors from PyPI, then runs `tests/fixtures/make_fixtures.py`. Tests never need this:
//! the fixtures are committed.

use crate::sh::{self, cmd, download_cache, root};
use std::path::PathBuf;

pub fn venv() -> PathBuf {
    download_cache()
        .parent()
        .map(|p| p.join("torch-venv"))
        .unwrap_or_else(|| PathBuf::from("torch-venv"))
}

pub fn run() -> anyhow::Result<()> {
    crate::assets::ensure(false)?;
    let python = ensure_venv()?;
    let mut c = cmd(
        &python.to_string_lossy(),
        &["tests/fixtures/make_fixtures.py"],
    );
    c.current_dir(root()).env("HF_HUB_OFFLINE", "1");
    sh::run(&mut c)
}

/// The venv's python, creating the venv (torch, transformers, peft, safetensors) when needed.
pub fn ensure_venv() -> anyhow::Result<PathBuf> {
    let venv = venv();
    let python = venv.join("bin/python");
    let ready = sh::output(&mut cmd(
        &python.to_string_lossy(),
        &["-c", "import torch, transformers, peft, safetensors"],
    ))
    .is_some();
    if !ready {
        sh::run(&mut cmd(
            "python3",
            &["-m", "venv", &venv.to_string_lossy()],
        ))?;
        sh::run(&mut cmd(
            &python.to_string_lossy(),
            &[
                "-m",
                "pip",
                "install",
                "--quiet",
                "torch",
                "transformers",
                "peft",
                "safetensors",
            ],
        ))?;
    }
    Ok(python)
}
