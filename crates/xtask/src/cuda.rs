//! `cargo xtask check-cuda`: type-checks (and builds the CUDA kernels of) the `cuda` feature
//! without a GPU, with NVIDIA's compiler from PyPI.
//!
//! candle 0.11's cudarc accepts CUDA toolkits up to 13.0, and nvcc must match its headers,
//! so every NVIDIA wheel is pinned to 13.0.* in a venv at `~/.cache/tunelab/cuda-venv`.
//! `CUDA_COMPUTE_CAP=90` (Hopper) is only what the kernels are compiled for here.

use crate::sh::{self, cmd, download_cache, root};
use std::path::PathBuf;

const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-crt==13.0.*",
];

fn venv() -> PathBuf {
    download_cache()
        .parent()
        .map(|p| p.join("cuda-venv"))
        .unwrap_or_else(|| PathBuf::from("cuda-venv"))
}

pub fn run() -> anyhow::Result<()> {
    let venv = venv();
    let python = venv.join("bin/python");
    if !python.is_file() {
        sh::run(&mut cmd(
            "python3",
            &["-m", "venv", &venv.to_string_lossy()],
        ))?;
    }
    let mut pip = cmd(
        &python.to_string_lossy(),
        &["-m", "pip", "install", "--quiet"],
    );
    pip.args(WHEELS);
    sh::run(&mut pip)?;
    let site = sh::output(&mut cmd(
        &python.to_string_lossy(),
        &[
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
    ))
    .ok_or_else(|| anyhow::anyhow!("cannot find the venv's site-packages"))?;
    let cuda = PathBuf::from(site).join("nvidia/cu13");
    anyhow::ensure!(
        cuda.join("bin/nvcc").is_file(),
        "{} has no bin/nvcc after installing {WHEELS:?}",
        cuda.display()
    );
    let path = format!(
        "{}:{}",
        cuda.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = cmd(
        "cargo",
        &[
            "check",
            "-p",
            "tunelab-cli",
            "-p",
            "tunelab-candle",
            "--features",
            "tunelab-cli/cuda",
        ],
    );
    c.current_dir(root())
        .env("CUDA_COMPUTE_CAP", "90")
        .env("CUDA_ROOT", &cuda)
        .env("CUDA_PATH", &cuda)
        .env("CUDA_HOME", &cuda)
        .env("PATH", path);
    sh::run(&mut c)?;
    println!(
        "the cuda feature type-checks (nvcc from {})",
        cuda.display()
    );
    Ok(())
}
