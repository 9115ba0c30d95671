//! `tunelab`: native fine-tuning jobs from the command line.
//!
//! Today it has `info`; `train`, `eval`, `predict`, `export` and `bench` build on the engine.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tunelab_core::Manifest;

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
    /// Show the installed model and datasets (verified by checksum) and the compute devices.
    Info {
        /// Folder written by `cargo xtask assets`.
        #[arg(long, default_value = "assets", env = "TUNELAB_ASSETS")]
        assets: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Prints the error chain (no backtrace) and exits 1.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Info { assets, json } => info(&assets, json),
    }
}

fn info(assets: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let manifest = Manifest::verify_dir(assets)
        .with_context(|| format!("checking the assets in {}", assets.display()))?;
    let gpu = pollster::block_on(tunelab_wgpu::Context::new(Default::default()));
    let cuda = tunelab_candle::device(tunelab_candle::DeviceKind::Cuda(0)).map(|_| ());

    if json {
        let value = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "assets": manifest,
            "wgpu": match &gpu { Ok(ctx) => serde_json::to_value(ctx.report())?, Err(e) => e.to_string().into() },
            "cuda": match &cuda { Ok(()) => "available".to_string(), Err(e) => e.to_string() },
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }

    println!("tunelab {}", env!("CARGO_PKG_VERSION"));
    println!("assets: {} (all checksums verified)", assets.display());
    for m in &manifest.models {
        let default = if m.id == manifest.default_model {
            " [default]"
        } else {
            ""
        };
        println!(
            "  model   {:<20} {} · {:.1}M parameters · {}{default}",
            m.id,
            m.architecture,
            m.parameters as f64 / 1e6,
            m.license
        );
    }
    for d in &manifest.datasets {
        let sizes: Vec<String> = d
            .split_sizes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "  dataset {:<20} {} · {} labels · {}",
            d.id,
            d.task,
            d.labels.len(),
            sizes.join(" / ")
        );
    }
    match &gpu {
        Ok(ctx) => {
            let r = ctx.report();
            println!(
                "wgpu: {} ({}, {}, {}) · max storage binding {} MiB",
                r.name,
                r.backend,
                r.device_type,
                r.architecture,
                r.limits.max_storage_buffer_binding_size >> 20
            );
        }
        Err(e) => println!("wgpu: unavailable: {e}"),
    }
    match cuda {
        Ok(()) => println!("cuda: available"),
        Err(e) => println!("cuda: {e}"),
    }
    Ok(())
}
