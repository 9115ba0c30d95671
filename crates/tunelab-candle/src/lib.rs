//! Tunelab's reference backend on candle-core.
//!
//! It runs on the CPU everywhere (also as the browser's fallback when WebGPU is missing) and
//! on NVIDIA GPUs through cuBLAS when built with the `cuda` feature. It is the reference every
//! other backend is tested against.
//!
//! ```
//! let device = tunelab_candle::device(tunelab_candle::DeviceKind::Cpu).unwrap();
//! assert!(device.is_cpu());
//! ```

mod backend;
pub mod cpu;
pub mod sgemm;

pub use backend::Candle;
use std::str::FromStr;

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    #[default]
    Cpu,
    /// CUDA device by ordinal; needs the `cuda` feature.
    Cuda(usize),
}

/// Errors choosing or using a candle device.
#[derive(Debug, thiserror::Error)]
pub enum CandleError {
    #[error("device `{0}` is not known; expected `cpu`, `cuda` or `cuda:N`")]
    UnknownDevice(String),
    #[error(
        "CUDA was requested but this build has no CUDA support; rebuild with `--features cuda`"
    )]
    CudaNotBuilt,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl FromStr for DeviceKind {
    type Err = CandleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| CandleError::UnknownDevice(other.to_string())),
        }
    }
}

/// Runs `f` on a fresh rayon pool of `threads` threads. The kernels promise results that do
/// not depend on the thread count; their tests compare runs on pools of different sizes.
#[doc(hidden)]
pub fn on_pool<T: Send>(
    threads: usize,
    f: impl FnOnce() -> T + Send,
) -> Result<T, rayon::ThreadPoolBuildError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    Ok(pool.install(f))
}

/// Opens the candle device for `kind`.
pub fn device(kind: DeviceKind) -> Result<candle_core::Device, CandleError> {
    match kind {
        DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
        DeviceKind::Cuda(ordinal) => {
            if !cfg!(feature = "cuda") {
                return Err(CandleError::CudaNotBuilt);
            }
            Ok(candle_core::Device::new_cuda(ordinal)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!("cpu".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
        assert_eq!("cuda".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda(3));
        let err = "gpu".parse::<DeviceKind>().unwrap_err().to_string();
        assert!(err.contains("`gpu` is not known"), "{err}");
        assert!("cuda:x".parse::<DeviceKind>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = device(DeviceKind::Cuda(0)).unwrap_err();
        assert!(matches!(err, CandleError::CudaNotBuilt));
        assert!(err.to_string().contains("--features cuda"));
    }

    #[test]
    fn cpu_matmul_agrees_with_a_naive_loop() {
        // Guards the build configuration (gemm backend, threading) we rely on.
        let dev = device(DeviceKind::Cpu).unwrap();
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.7).cos()).collect();
        let ta = candle_core::Tensor::from_slice(&a, (m, k), &dev).unwrap();
        let tb = candle_core::Tensor::from_slice(&b, (k, n), &dev).unwrap();
        let got: Vec<f32> = ta
            .matmul(&tb)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                assert!((got[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
