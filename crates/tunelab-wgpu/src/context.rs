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
    /// Bind at most this many bytes of a storage buffer, below the device's limit: tests use it
    /// to run the chunked paths (tensors larger than one binding) on small tensors.
    pub max_binding: Option<u64>,
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
    /// Why the device was lost, once it was (`GPUDevice.lost` in a browser).
    lost: Arc<Mutex<Option<String>>>,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<wgpu::ComputePipeline>>>,
    /// GPU time per kernel while profiling ([`Context::start_profiling`]).
    profiler: Mutex<Option<Profiler>>,
    /// Uniform pages not in use by a recorder (`ops::Recorder`).
    uniform_pages: Mutex<Vec<wgpu::Buffer>>,
    /// A storage buffer holding 1.0, bound where an optional input is absent.
    one: std::sync::OnceLock<wgpu::Buffer>,
    /// Scratch buffers (partial sums and the like) not in use by a recorder, by size class.
    scratch: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// The most bytes one storage binding holds: the device's limit or
    /// [`ContextOptions::max_binding`] if lower.
    binding_limit: u64,
}

/// Timestamp pairs one query set holds (WebGPU allows 4096 queries per set).
const PAIRS_PER_SET: u32 = 2048;
/// Query sets one profiling round may use before [`Context::collect_profile`] must run.
const MAX_SETS: usize = 8;

/// Begin/end timestamps of each compute pass, written by the GPU into query sets.
struct Profiler {
    /// Pair `i` is in set `i / PAIRS_PER_SET`; sets are made as a round needs them.
    sets: Vec<wgpu::QuerySet>,
    /// The kernel entry of each recorded pass, in query-pair order.
    labels: Vec<&'static str>,
    /// Passes recorded after the query set was full (not timed).
    untimed: u64,
    totals: HashMap<&'static str, KernelTime>,
}

/// The GPU time one kernel entry point took while profiling.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelTime {
    pub kernel: String,
    /// Compute passes that ran it.
    pub passes: u64,
    /// Summed GPU time between each pass's begin and end timestamps, in milliseconds.
    pub total_ms: f64,
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
        // Timestamp queries are only used when profiling is asked for, but a device can only
        // have the features it was created with.
        let features =
            adapter.features() & (wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY);
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

        let binding_limit = options
            .max_binding
            .unwrap_or(u64::MAX)
            .min(report.limits.max_storage_buffer_binding_size);
        let uncaptured = Arc::new(Mutex::new(None));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = sink.lock() {
                let why = match reason {
                    wgpu::DeviceLostReason::Destroyed => "destroyed",
                    wgpu::DeviceLostReason::Unknown => "lost",
                };
                slot.get_or_insert_with(|| {
                    if message.is_empty() {
                        why.to_string()
                    } else {
                        format!("{why}: {message}")
                    }
                });
            }
        });
        Ok(Self {
            device,
            queue,
            report,
            uncaptured,
            lost,
            pipelines: Mutex::new(HashMap::new()),
            profiler: Mutex::new(None),
            uniform_pages: Mutex::new(Vec::new()),
            one: std::sync::OnceLock::new(),
            scratch: Mutex::new(HashMap::new()),
            binding_limit,
        })
    }

    /// The most bytes one storage binding may hold (see [`ContextOptions::max_binding`]).
    pub fn binding_limit(&self) -> u64 {
        self.binding_limit
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
        let mut cache = lock(&self.pipelines);
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

    /// Starts timing every compute pass on the GPU (timestamp queries). Fails with
    /// [`WgpuError::Unsupported`] where the adapter has no timestamp queries (e.g. browsers
    /// that have not enabled `timestamp-query`).
    pub fn start_profiling(&self) -> Result<(), WgpuError> {
        if !self
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return Err(WgpuError::Unsupported(format!(
                "profiling needs timestamp queries, which {} does not offer",
                self.report.name
            )));
        }
        *lock(&self.profiler) = Some(Profiler {
            sets: Vec::new(),
            labels: Vec::new(),
            untimed: 0,
            totals: HashMap::new(),
        });
        Ok(())
    }

    /// Stops profiling and returns the GPU time per kernel entry point of the collected
    /// rounds, largest first, and the number of passes that were not timed because a round
    /// overflowed.
    pub fn stop_profiling(&self) -> (Vec<KernelTime>, u64) {
        let Some(p) = lock(&self.profiler).take() else {
            return (Vec::new(), 0);
        };
        for set in &p.sets {
            set.destroy();
        }
        let mut rows: Vec<KernelTime> = p.totals.into_values().collect();
        rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        (rows, p.untimed)
    }

    /// Whether compute passes are being timed.
    pub(crate) fn is_profiling(&self) -> bool {
        lock(&self.profiler).is_some()
    }

    /// Begins a compute pass named `label`, timed on the GPU while profiling.
    pub(crate) fn begin_pass<'e>(
        &self,
        encoder: &'e mut wgpu::CommandEncoder,
        label: &'static str,
    ) -> wgpu::ComputePass<'e> {
        let mut timed = None;
        if let Some(p) = lock(&self.profiler).as_mut() {
            let n = p.labels.len() as u32;
            let set = (n / PAIRS_PER_SET) as usize;
            if set == p.sets.len() && set < MAX_SETS {
                p.sets
                    .push(self.device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("profile"),
                        ty: wgpu::QueryType::Timestamp,
                        count: PAIRS_PER_SET * 2,
                    }));
            }
            match p.sets.get(set) {
                Some(s) => {
                    p.labels.push(label);
                    timed = Some((s.clone(), (n % PAIRS_PER_SET) * 2));
                }
                None => p.untimed += 1,
            }
        }
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: timed
                .as_ref()
                .map(|(set, at)| wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(*at),
                    end_of_pass_write_index: Some(at + 1),
                }),
        })
    }

    /// Reads back the timestamps of the passes submitted since the last call and adds them
    /// to the per-kernel totals. Call it after the profiled work was submitted (a training
    /// step's scalar readback submits it).
    pub async fn collect_profile(&self) -> Result<(), WgpuError> {
        let (sets, labels) = match lock(&self.profiler).as_mut() {
            Some(p) if !p.labels.is_empty() => (p.sets.clone(), std::mem::take(&mut p.labels)),
            _ => return Ok(()),
        };
        let bytes = labels.len() as u64 * 16;
        let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile.resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("profile"),
            });
        // Set i's pairs land at byte i * PAIRS_PER_SET * 16 (a multiple of the 256-byte
        // alignment resolves need).
        for (i, set) in sets.iter().enumerate() {
            let first = i as u32 * PAIRS_PER_SET;
            let pairs = (labels.len() as u32)
                .saturating_sub(first)
                .min(PAIRS_PER_SET);
            if pairs > 0 {
                encoder.resolve_query_set(set, 0..pairs * 2, &resolved, u64::from(first) * 16);
            }
        }
        self.queue.submit([encoder.finish()]);
        let ticks = self.read::<u64>(&resolved, labels.len() * 2).await;
        resolved.destroy();
        let ticks = ticks?;
        let period_ns = f64::from(self.queue.get_timestamp_period());
        let mut guard = lock(&self.profiler);
        let Some(p) = guard.as_mut() else {
            return Ok(());
        };
        for (label, pair) in labels.iter().zip(ticks.chunks_exact(2)) {
            let t = p.totals.entry(label).or_insert_with(|| KernelTime {
                kernel: label.to_string(),
                ..Default::default()
            });
            t.passes += 1;
            // A driver may write end < begin for an empty pass; count it as zero.
            t.total_ms += pair[1].saturating_sub(pair[0]) as f64 * period_ns / 1e6;
        }
        Ok(())
    }

    /// A read-only storage buffer holding the single value 1.0: bound in place of an absent
    /// optional input (a key mask of all ones, a bias the kernel does not read), since
    /// bindings cannot be left out.
    pub(crate) fn one(&self) -> wgpu::Buffer {
        self.one
            .get_or_init(|| crate::ops::upload(self, "one", &[1.0]))
            .clone()
    }

    /// A storage buffer for at least `n` f32 values from the scratch pool (power-of-two size
    /// classes), or a new one. Through `ops::Recorder::scratch`, which returns it after the
    /// submission: reused buffers skip wgpu's zeroing of new ones and the allocation.
    pub(crate) fn take_scratch(&self, n: u64) -> wgpu::Buffer {
        let class = (n.max(1) * 4).next_power_of_two().max(16);
        lock(&self.scratch)
            .get_mut(&class)
            .and_then(Vec::pop)
            .unwrap_or_else(|| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("scratch"),
                    size: class,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
    }

    /// Takes back scratch buffers whose recorder was submitted.
    pub(crate) fn return_scratch(&self, buffers: impl IntoIterator<Item = wgpu::Buffer>) {
        let mut pool = lock(&self.scratch);
        for b in buffers {
            pool.entry(b.size()).or_default().push(b);
        }
    }

    /// Scratch buffers in the pool and their bytes.
    pub fn scratch_stats(&self) -> (usize, u64) {
        lock(&self.scratch)
            .iter()
            .fold((0, 0), |(n, bytes), (class, v)| {
                (n + v.len(), bytes + class * v.len() as u64)
            })
    }

    /// Destroys the pooled scratch buffers.
    pub fn release_scratch(&self) {
        for (_, v) in lock(&self.scratch).drain() {
            for b in v {
                b.destroy();
            }
        }
    }

    /// A uniform page from the pool, or a new one.
    pub(crate) fn uniform_page(&self) -> wgpu::Buffer {
        lock(&self.uniform_pages).pop().unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("uniforms"),
                size: crate::ops::UNIFORM_PAGE,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// Takes back pages whose recorder was submitted.
    pub(crate) fn return_uniform_pages(&self, pages: impl IntoIterator<Item = wgpu::Buffer>) {
        lock(&self.uniform_pages).extend(pages);
    }

    /// Uniform pages in the pool (for tests).
    pub fn pooled_uniform_pages(&self) -> usize {
        lock(&self.uniform_pages).len()
    }

    /// Why the device was lost, if it was: every later operation fails with
    /// [`WgpuError::DeviceLost`].
    pub fn lost(&self) -> Option<String> {
        lock(&self.lost).clone()
    }

    /// Destroys the device, as a browser does when it reclaims one: for tests of what
    /// training does when the GPU goes away.
    pub fn destroy_device(&self) {
        self.device.destroy();
    }

    fn check_lost(&self) -> Result<(), WgpuError> {
        match self.lost() {
            Some(why) => Err(WgpuError::DeviceLost(why)),
            None => Ok(()),
        }
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
    /// storage-binding limit ([`Context::binding_limit`]).
    pub fn check_binding(&self, what: &str, bytes: u64) -> Result<(), WgpuError> {
        let available = self.binding_limit;
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
        self.read::<f32>(src, len).await
    }

    /// Copies `len` values of type `T` (f32 results, u64 timestamps) from `src` to the host.
    pub(crate) async fn read<T: bytemuck::Pod>(
        &self,
        src: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<T>, WgpuError> {
        self.check_lost()?;
        let size = (len * std::mem::size_of::<T>()) as u64;
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
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            self.check_lost()?;
            return Err(WgpuError::Readback(e.to_string()));
        }
        let mapped = rx.await;
        // A lost device fails the mapping: say so, rather than what the mapping says.
        self.check_lost()?;
        mapped
            .map_err(|_| WgpuError::Readback("the device was lost before mapping".into()))?
            .map_err(|e| WgpuError::Readback(e.to_string()))?;
        let out = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| WgpuError::Readback(e.to_string()))?;
            bytemuck::pod_collect_to_vec::<u8, T>(&view)
        };
        staging.unmap();
        staging.destroy();
        Ok(out)
    }

    /// Runs `work` inside a validation error scope and turns a captured error into
    /// [`WgpuError::Device`].
    pub(crate) async fn checked<T>(&self, work: impl FnOnce() -> T) -> Result<T, WgpuError> {
        self.check_lost()?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = work();
        let popped = scope.pop().await;
        self.check_lost()?;
        match popped {
            None => Ok(out),
            Some(e) => Err(WgpuError::Device(e.to_string())),
        }
    }
}

/// Locks `m`, recovering the data if a panicking thread poisoned it (the state stays usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod tests {
    /// Opens a context on whatever adapter is present. Where the test group asks for a GPU
    /// (`TUNELAB_REQUIRE_ADAPTER=1`, set by `cargo xtask test`), a missing one fails the test.
    pub(crate) fn context() -> Option<super::Context> {
        context_with(Default::default())
    }

    /// [`context`] with `options` (e.g. a small binding limit).
    pub(crate) fn context_with(options: super::ContextOptions) -> Option<super::Context> {
        match pollster::block_on(super::Context::new(options)) {
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

    /// A destroyed device (as a browser reclaims one) makes readbacks and checked work fail
    /// with `DeviceLost` instead of hanging or returning garbage.
    #[test]
    fn a_lost_device_fails_every_later_operation_by_name() {
        let Some(ctx) = context() else { return };
        let a = crate::ops::upload(&ctx, "a", &[1.0, 2.0, 3.0]);
        assert_eq!(
            pollster::block_on(ctx.read_f32(&a, 3)).unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        assert_eq!(ctx.lost(), None);
        ctx.destroy_device();
        let err = pollster::block_on(ctx.read_f32(&a, 3)).unwrap_err();
        assert!(
            matches!(err, crate::WgpuError::DeviceLost(_)),
            "after destroy: {err}"
        );
        assert!(err.to_string().contains("destroyed"), "{err}");
        let err = pollster::block_on(ctx.checked(|| ())).unwrap_err();
        assert!(matches!(err, crate::WgpuError::DeviceLost(_)), "{err}");
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod profile_tests {
    use crate::WgpuError;
    use crate::ops::Recorder;
    use crate::ops::elementwise::{Op, encode};

    /// Every pass recorded while profiling is timed and counted under its kernel, across
    /// more passes than one query set holds; nothing is counted after stopping.
    #[test]
    fn profiling_times_every_pass_per_kernel() {
        let Some(ctx) = super::tests::context() else {
            return;
        };
        if let Err(e) = ctx.start_profiling() {
            // Adapters without timestamp queries refuse with a typed error.
            assert!(matches!(e, WgpuError::Unsupported(_)), "{e}");
            return;
        }
        let n = 1000u32;
        let a = crate::ops::upload(&ctx, "a", &vec![1.0; n as usize]);
        let out = crate::ops::output(&ctx, "out", u64::from(n));
        let (adds, scales) = (super::PAIRS_PER_SET as usize + 5, 7);
        let mut enc = Recorder::new(&ctx);
        for i in 0..adds + scales {
            let op = if i < adds { Op::Add } else { Op::Scale };
            encode(&ctx, &mut enc, op, n, 2.0, 0.0, &a, Some(&a), &out).unwrap();
        }
        enc.submit(&ctx);
        pollster::block_on(ctx.collect_profile()).unwrap();
        let (rows, untimed) = ctx.stop_profiling();
        assert_eq!(untimed, 0);
        let passes: Vec<(&str, u64)> = rows.iter().map(|r| (r.kernel.as_str(), r.passes)).collect();
        assert!(passes.contains(&("add", adds as u64)), "{passes:?}");
        assert!(passes.contains(&("scale", scales as u64)), "{passes:?}");
        assert!(
            rows.iter()
                .all(|r| r.total_ms.is_finite() && r.total_ms >= 0.0)
        );

        // A second round counts only its own passes.
        ctx.start_profiling().unwrap();
        let mut enc = Recorder::new(&ctx);
        for _ in 0..3 {
            encode(&ctx, &mut enc, Op::Add, n, 1.0, 0.0, &a, Some(&a), &out).unwrap();
        }
        enc.submit(&ctx);
        pollster::block_on(ctx.collect_profile()).unwrap();
        let (rows, untimed) = ctx.stop_profiling();
        assert_eq!(untimed, 0);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].kernel.as_str(), rows[0].passes), ("add", 3));
        // A stopped profiler records nothing.
        let mut enc = Recorder::new(&ctx);
        encode(&ctx, &mut enc, Op::Add, n, 1.0, 0.0, &a, Some(&a), &out).unwrap();
        enc.submit(&ctx);
        pollster::block_on(ctx.collect_profile()).unwrap();
        assert_eq!(ctx.stop_profiling(), (Vec::new(), 0));
    }
}
