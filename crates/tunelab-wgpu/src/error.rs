//! Errors of the WebGPU backend.

/// Everything that can go wrong talking to the GPU. None of these is a panic.
#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    /// No adapter matched: no WebGPU in this browser, or no Vulkan/Metal/DX12 driver.
    #[error(
        "no GPU adapter available ({0}); in a browser enable WebGPU, natively install a Vulkan driver (e.g. Mesa's lavapipe)"
    )]
    NoAdapter(String),
    /// The adapter refused the device (limits or features it does not have).
    #[error("the GPU adapter refused to create a device: {0}")]
    RequestDevice(String),
    /// A request exceeds what the adapter allows.
    #[error("{what} needs {requested} but the adapter allows at most {available}")]
    LimitExceeded {
        what: String,
        requested: u64,
        available: u64,
    },
    /// The adapter lacks an optional feature the request needs.
    #[error("not supported here: {0}")]
    Unsupported(String),
    /// Inputs of an op do not agree.
    #[error("{0}")]
    Shape(String),
    /// Reading results back from the GPU failed.
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),
    /// The driver reported an error while validating or running work.
    #[error("GPU error: {0}")]
    Device(String),
    /// The device is gone (the driver reset it, the browser reclaimed it, or it was
    /// destroyed): nothing on it can be read or run again; a new context is needed.
    #[error("the GPU device was lost ({0})")]
    DeviceLost(String),
}
