//! Tunelab's engine-independent core.
//!
//! Everything here compiles for native targets and for `wasm32-unknown-unknown`; nothing
//! here touches a device. Backends (`tunelab-candle`, `tunelab-wgpu`) build on these types.
//!
//! - [`shape`]: tensor shapes and their row-major strides.
//! - [`manifest`]: the asset manifest that `cargo xtask assets` writes and the CLI and the
//!   web app read to find the default model and the sample datasets.

pub mod manifest;
pub mod shape;

pub use manifest::{AssetFile, DatasetCard, DatasetFormat, Manifest, ManifestError, ModelCard};
pub use shape::{Shape, ShapeError};
