//! Project automation, run as `cargo xtask <command>`.
//!
//! - `setup`: installs the toolchain pieces and system packages the build and tests need.
//! - `assets`: fetches the default model and sample datasets into `assets/` and verifies them.
//! - `serve`: the main job: set-up and assets if missing, build the web app, serve it.
//! - `test`: every test group, with a summary line.
//! - `bench`: the training-step benchmark into `docs/benchmarks.md` (`--vs-torch` adds PyTorch).
//! - `fuzz`: coverage-guided fuzzing of the file readers; writes `docs/fuzzing.md`.
//! - `fixtures`: regenerate the PyTorch parity fixtures (needs PyPI; never run by tests).
//! - `results`: train every method on the sample tasks into `docs/results.md`.
//! - `check-cuda`: type-check the `cuda` feature with NVIDIA's compiler from PyPI.

mod assets;
mod bench;
mod cuda;
mod fixtures;
mod fuzz;
mod results;
mod serve;
mod setup;
mod sh;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Tunelab's project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what the build and tests need (idempotent; seconds when all is present).
    Setup,
    /// Fetch the default model and sample datasets into assets/, verified by sha256.
    Assets {
        /// Fetch and convert again even when the installed assets verify.
        #[arg(long)]
        force: bool,
        /// Only verify the installed assets; fail naming the first bad file.
        #[arg(long, conflicts_with = "force")]
        check: bool,
    },
    /// Build the web app and serve it with the assets (runs setup and assets when needed).
    Serve {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Serve the existing build in dist/ without rebuilding.
        #[arg(long)]
        no_build: bool,
    },
    /// Run the test groups (all of them unless some are named).
    Test(test::Groups),
    /// Fuzz the readers of untrusted files (libFuzzer); writes docs/fuzzing.md.
    Fuzz(fuzz::Options),
    /// Regenerate the PyTorch parity fixtures in tests/fixtures (sets up a torch venv).
    Fixtures,
    /// Type-check the `cuda` feature with NVIDIA's compiler from PyPI (no GPU needed).
    CheckCuda,
    /// Train every method on the sample tasks; writes docs/results.md.
    Results {
        /// Only runs whose name (`<task>-<method>`) contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Benchmark a training step per PEFT method; writes docs/benchmarks.md.
    Bench {
        /// Also run PyTorch + PEFT on the same shape in the same run (sets up a torch venv).
        #[arg(long)]
        vs_torch: bool,
        /// Only the web app's section: time to the first step, step time on WebGPU and on the
        /// wasm CPU backend against native single-thread, bundle size.
        #[arg(long, conflicts_with = "vs_torch")]
        web: bool,
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
        Command::Setup => setup::run(),
        Command::Assets { force, check } => {
            if check {
                assets::check().map(|_| ())
            } else {
                assets::ensure(force)
            }
        }
        Command::Serve { port, no_build } => serve::main(port, no_build),
        Command::Test(groups) => test::run(groups),
        Command::Fuzz(opts) => fuzz::main(opts),
        Command::Fixtures => fixtures::run(),
        Command::Results { only } => results::run(only),
        Command::CheckCuda => cuda::run(),
        Command::Bench { vs_torch, web } => {
            if web {
                bench::web()
            } else {
                bench::run(vs_torch)
            }
        }
    }
}
