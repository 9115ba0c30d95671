//! The long-lived GPU context: instance, adapter, device, queue and pipeline cache.
//!
//! Created once per program (per worker in the browser). It asks the adapter for its real
//! limits instead of WebGPU's defaults, so e.g. a 1 GiB `maxStorageBufferBindingSize` on
//! SwiftShader is usable, and reports what it got in an [`AdapterReport`].

use crate::WgpuError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How to pick the adapter.
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Prefer a software adapter (lavapipe, SwiftShader, WARP).
    pub force_fallback_adapter: bool,
    /// Prefer the discrete GPU over the integrated one.
    pub high_performance: bool,
}

/// The limits that matter for training, as granted to our device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsReport {
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_size_x: u32,
    pub max_compute_workgroups_per_dimension: u32,
}

impl LimitsReport {
    fn from_limits(l: &wgpu::Limits) -> Self {
        Self {
            max_buffer_size: l.max_buffer_size,
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            max_compute_workgroup_size_x: l.max_compute_workgroup_size_x,
            max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
        }
    }
}

/// What the adapter is and what the device was granted. Shown by the web app and `tunelab info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterReport {
    /// Adapter name (on the web: GPUAdapterInfo.description, which may be empty).
    pub name: String,
    /// Vendor: a name on the web (`google`), a PCI id natively (`0x10005` for Mesa).
    pub vendor: String,
    /// Architecture on the web (`swiftshader`), driver name natively (`llvmpipe`).
    pub architecture: String,
    /// `Vulkan`, `Metal`, `Dx12`, `BrowserWebGpu`, ...
    pub backend: String,
    /// `Cpu` for software adapters.
    pub device_type: String,
    pub limits: LimitsReport,
    /// Optional features the adapter has, e.g. `SHADER_F16`.
    pub features: Vec<String>,
}

/// One device for the life of the program, with a pipeline cache.
pub struct Context {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    report: AdapterReport,
    /// The first error the device reported outside an error scope (instead of wgpu's default
    /// of panicking); taken by the next readback.
    uncaptured: Arc<Mutex<Option<String>>>,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<wgpu::ComputePipeline>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("adapter", &self.report.name)
            .field("backend", &self.report.backend)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Opens the adapter and device. Natively `WGPU_BACKEND` (e.g. `vulkan`) narrows the
    /// backends; in the browser it uses WebGPU.
    pub async fn new(options: ContextOptions) -> Result<Self, WgpuError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: if options.high_performance {
                    wgpu::PowerPreference::HighPerformance
                } else {
                    wgpu::PowerPreference::None
                },
                force_fallback_adapter: options.force_fallback_adapter,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| WgpuError::NoAdapter(e.to_string()))?;

        // Ask for everything the adapter has: the defaults (128 MiB bindings) are too small
        // for real models.
        let limits = adapter.limits();
        let features = adapter.features() & wgpu::Features::SHADER_F16;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("tunelab"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| WgpuError::RequestDevice(e.to_string()))?;

        let info = adapter.get_info();
        #[allow(unused_mut)]
        let mut report = AdapterReport {
            name: info.name.clone(),
            vendor: format!("{:#x}", info.vendor),
            architecture: info.driver.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            limits: LimitsReport::from_limits(&device.limits()),
            features: adapter
                .features()
                .iter_names()
                .map(|(name, _)| name.to_string())
                .collect(),
        };
        #[cfg(target_arch = "wasm32")]
        if let Ok(js) = crate::web::browser_adapter_info().await {
            report.vendor = js.vendor;
            report.architecture = js.architecture;
            report.name = if !js.description.is_empty() {
                js.description
            } else {
                format!("{} {}", report.vendor, report.architecture)
            };
        }

        let uncaptured = Arc::new(Mutex::new(None));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));
        Ok(Self {
            device,
            queue,
            report,
            uncaptured,
            pipelines: Mutex::new(HashMap::new()),
        })
    }

    /// What the adapter is and what this device may do.
    pub fn report(&self) -> &AdapterReport {
        &self.report
    }

    /// The compute pipeline for `entry` in `source`, built once and cached.
    pub(crate) fn pipeline(
        &self,
        kernel: &'static str,
        source: &'static str,
        entry: &'static str,
    ) -> Arc<wgpu::ComputePipeline> {
        let mut cache = match self.pipelines.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        cache
            .entry((kernel, entry))
            .or_insert_with(|| {
                let module = self
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(kernel),
                        source: wgpu::ShaderSource::Wgsl(source.into()),
                    });
                Arc::new(
                    self.device
                        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(entry),
                            layout: None,
                            module: &module,
                            entry_point: Some(entry),
                            compilation_options: Default::default(),
                            cache: None,
                        }),
                )
            })
            .clone()
    }

    /// The first device error reported since the last call, if any.
    pub(crate) fn take_error(&self) -> Option<String> {
        self.uncaptured.lock().ok().and_then(|mut e| e.take())
    }

    /// Number of pipelines built so far.
    pub fn cached_pipelines(&self) -> usize {
        self.pipelines.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Fails with [`WgpuError::LimitExceeded`] when a binding of `bytes` exceeds the device's
    /// storage-binding limit.
    pub fn check_binding(&self, what: &str, bytes: u64) -> Result<(), WgpuError> {
        let available = self.report.limits.max_storage_buffer_binding_size;
        if bytes > available {
            return Err(WgpuError::LimitExceeded {
                what: what.to_string(),
                requested: bytes,
                available,
            });
        }
        Ok(())
    }

    /// Copies `len` f32 values from `src` to the host. Only for results and saving: training
    /// steps read back scalars only.
    pub(crate) async fn read_f32(
        &self,
        src: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<f32>, WgpuError> {
        let size = (len * std::mem::size_of::<f32>()) as u64;
        if size == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);

        let (tx, rx) = futures_channel::oneshot::channel();
        staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |result| {
                let _ = tx.send(result);
            });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| WgpuError::Readback(e.to_string()))?;
        rx.await
            .map_err(|_| WgpuError::Readback("the device was lost before mapping".into()))?
            .map_err(|e| WgpuError::Readback(e.to_string()))?;
        let out = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| WgpuError::Readback(e.to_string()))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        staging.destroy();
        Ok(out)
    }

    /// Runs `work` inside a validation error scope and turns a captured error into
    /// [`WgpuError::Device`].
    pub(crate) async fn checked<T>(&self, work: impl FnOnce() -> T) -> Result<T, WgpuError> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = work();
        match scope.pop().await {
            None => Ok(out),
            Some(e) => Err(WgpuError::Device(e.to_string())),
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod tests {
    /// Opens a context on whatever adapter is present. Where the test group asks for a GPU
    /// (`TUNELAB_REQUIRE_ADAPTER=1`, set by `cargo xtask test`), a missing one fails the test.
    pub(crate) fn context() -> Option<super::Context> {
        match pollster::block_on(super::Context::new(Default::default())) {
            Ok(ctx) => Some(ctx),
            Err(e) if std::env::var_os("TUNELAB_REQUIRE_ADAPTER").is_none() => {
                eprintln!("skipping: {e}");
                None
            }
            Err(e) => panic!("TUNELAB_REQUIRE_ADAPTER is set but: {e}"),
        }
    }

    #[test]
    fn device_gets_the_adapters_real_limits() {
        let Some(ctx) = context() else { return };
        let r = ctx.report();
        eprintln!("adapter: {r:?}");
        // WebGPU's default is 128 MiB; we must not have asked for less than the default.
        assert!(
            r.limits.max_storage_buffer_binding_size >= 128 << 20,
            "{r:?}"
        );
        assert!(
            r.limits.max_compute_workgroups_per_dimension >= 65535,
            "{r:?}"
        );
        let too_big = r.limits.max_storage_buffer_binding_size + 4;
        let err = ctx.check_binding("embedding table", too_big).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "embedding table needs {too_big} but the adapter allows at most {}",
                r.limits.max_storage_buffer_binding_size
            )
        );
    }
}
