//! Small helpers for running commands and finding the project's folders.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::Command;

/// The repository root.
pub fn root() -> PathBuf {
    // `cargo xtask` (cargo run) sets CARGO_MANIFEST_DIR for the process too; prefer it to the
    // path compiled in, which names whichever checkout last built xtask when clones share a
    // target folder (cargo does not rebuild a binary because its checkout moved).
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

/// Cargo's target folder (`CARGO_TARGET_DIR`, else `target/` in the repository).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Where downloaded registry packages are cached across clones.
pub fn download_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("TUNELAB_CACHE") {
        return PathBuf::from(dir).join("downloads");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/tunelab/downloads")
}

/// A command, printed before it runs.
pub fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Runs `c`, echoing it, and fails with its exit status.
pub fn run(c: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", show(c));
    let status = c
        .status()
        .with_context(|| format!("could not start `{}`", show(c)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", show(c));
    }
    Ok(())
}

/// Runs `c` quietly and returns its trimmed stdout, or None if it fails or is missing.
pub fn output(c: &mut Command) -> Option<String> {
    let out = c.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn show(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().to_string();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
