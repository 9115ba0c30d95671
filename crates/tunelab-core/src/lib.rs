//! Tunelab's engine-independent core.
//!
//! Everything here compiles for native targets and for `wasm32-unknown-unknown`; nothing
//! here touches a device. Backends (`tunelab-candle`, `tunelab-wgpu`) build on these types.
//!
//! - [`shape`]: tensor shapes and their row-major strides.
//! - [`backend`]: the [`Backend`] trait of coarse fused ops, each with its backward.
//! - [`tape`]: the one gradient tape that model, PEFT and trainer code record on.
//! - [`manifest`]: the asset manifest that `cargo xtask assets` writes and the CLI and the
//!   web app read to find the default model and the sample datasets.

pub mod backend;
pub mod data;
pub mod export;
pub mod generate;
pub mod manifest;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod optim;
pub mod params;
pub mod peft;
pub mod predict;
pub mod preflight;
pub mod rng;
pub mod safetensors_io;
pub mod session;
pub mod shape;
pub mod tape;
pub mod tokenizer;
pub mod trainer;
pub mod zipfile;

pub use backend::{Backend, BackendError};
pub use manifest::{AssetFile, DatasetCard, DatasetFormat, Manifest, ManifestError, ModelCard};
pub use shape::{Shape, ShapeError};
