//! The page's panels, one component file each; they read and change the shared [`App`](crate::app) state.

pub(crate) mod data;
pub(crate) mod device;
pub(crate) mod eval;
pub(crate) mod export;
pub(crate) mod method;
pub(crate) mod model;
pub(crate) mod playground;
pub(crate) mod preflight;
pub(crate) mod status;
pub(crate) mod storage;
pub(crate) mod train;
