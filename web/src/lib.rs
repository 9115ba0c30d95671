//! Shared by the page and the training worker: the message protocol, browser storage and
//! zip archives.

pub mod protocol;
pub mod saved;
pub mod storage;
/// Zip archives of exports (in the core, beside export and import).
pub use tunelab_core::zipfile;
