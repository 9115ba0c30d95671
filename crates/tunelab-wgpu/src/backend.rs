//! The engine's [`Backend`] on WebGPU: the same model, PEFT and trainer code trains here.
//!
//! - **One pending command encoder.** Every op records its dispatches into it; it is
//!   submitted at a readback (`download`), an explicit [`Wgpu::flush`], or once it holds
//!   [`Wgpu::with_flush_every`] dispatches (at the next op), so that the GPU runs the first
//!   part of a step while the CPU records the rest. A step reads back only its scalars.
//! - **A size-class buffer pool.** Tensors hold pooled buffers (power-of-two sizes). A buffer
//!   whose last tensor is dropped is retired and becomes reusable only after the commands
//!   recorded so far are submitted, so a reuse can never overtake an earlier reader.
//!   [`Wgpu::pool_stats`] counts live and pooled buffers and bytes; [`Wgpu::release_pool`]
//!   destroys the pooled ones.
//! - **Token ids keep a host copy** (they are uploaded from the host): the embedding's bounds
//!   check and the deterministic scatter-add's sort need no readback.

use crate::ops::{
    self, Recorder, attention, elementwise::Op, embedding, layer_norm, loss, matmul, optim, reduce,
    sequence,
};
use crate::{Context, WgpuError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tunelab_core::Shape;
use tunelab_core::backend::{Activation, AdamW, Backend, BackendError, LayerNormSaved, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DType {
    F32,
    U32,
}

/// Buffers whose tensors were dropped, waiting for the next submission.
type Retired = Arc<Mutex<Vec<(u64, wgpu::Buffer)>>>;

#[derive(Debug)]
struct Buf {
    buffer: wgpu::Buffer,
    class: u64,
    retired: Retired,
}

impl Drop for Buf {
    fn drop(&mut self) {
        match self.retired.lock() {
            Ok(mut r) => r.push((self.class, self.buffer.clone())),
            Err(_) => self.buffer.destroy(),
        }
    }
}

/// A tensor on the GPU.
#[derive(Clone)]
pub struct WTensor {
    buf: Arc<Buf>,
    shape: Shape,
    dtype: DType,
    /// Token ids as uploaded (for bounds checks and the embedding gradient's sort).
    host_u32: Option<Arc<Vec<u32>>>,
}

impl std::fmt::Debug for WTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WTensor({:?} {})", self.dtype, self.shape)
    }
}

impl WTensor {
    fn numel(&self) -> usize {
        self.shape.numel()
    }
    fn b(&self) -> &wgpu::Buffer {
        &self.buf.buffer
    }
}

/// Live and pooled buffers (for memory tests and reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Buffers held by tensors (or retired, awaiting the next submission).
    pub live_buffers: usize,
    pub live_bytes: u64,
    /// Buffers kept for reuse.
    pub pooled_buffers: usize,
    pub pooled_bytes: u64,
    /// Buffers created since the backend started.
    pub created: usize,
    /// Scratch buffers (partial sums) pooled by the context between submissions.
    pub scratch_buffers: usize,
    pub scratch_bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    /// The pending commands, with their uniforms and scratch buffers.
    encoder: Option<Recorder>,
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    live_buffers: usize,
    live_bytes: u64,
    created: usize,
}

/// The WebGPU backend. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Wgpu {
    ctx: Arc<Context>,
    state: Arc<Mutex<State>>,
    retired: Retired,
    flush_every: usize,
}

/// Dispatches per submission by default (see [`Wgpu::with_flush_every`]).
pub const FLUSH_EVERY: usize = 64;

impl std::fmt::Debug for Wgpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wgpu({})", self.ctx.report().name)
    }
}

fn dev(e: WgpuError) -> BackendError {
    BackendError::Device {
        backend: "wgpu",
        msg: e.to_string(),
    }
}

fn shape_err(op: &'static str, msg: String) -> BackendError {
    BackendError::Shape { op, msg }
}

fn u32_of(op: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n)
        .map_err(|_| shape_err(op, format!("{n} elements is more than a kernel indexes")))
}

impl Wgpu {
    // In wasm, wgpu's types are neither Send nor Sync (one thread owns the device); the Arc is
    // for sharing within that thread and across threads natively.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            state: Arc::new(Mutex::new(State::default())),
            retired: Arc::new(Mutex::new(Vec::new())),
            flush_every: FLUSH_EVERY,
        }
    }

    /// Submits the pending commands once they hold `n` dispatches (checked when the next op
    /// starts recording; 0: only at readbacks and explicit flushes). Smaller submissions let
    /// the GPU start while the CPU records the rest of a step, at the cost of one submission
    /// each; results are the same.
    pub fn with_flush_every(mut self, n: usize) -> Self {
        self.flush_every = n;
        self
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::context::lock(&self.state)
    }

    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    fn alloc(&self, st: &mut State, bytes: u64) -> Result<Arc<Buf>> {
        let class = bytes.max(4).next_power_of_two();
        let max = self.ctx.report().limits.max_buffer_size;
        // Exact sizes (in 16-byte steps) where the power-of-two class would pass the buffer
        // limit, or the binding limit for a tensor that fits one binding (ops bind whole
        // buffers).
        let limit = self.ctx.binding_limit();
        let class = if (class > max && bytes <= max) || (class > limit && bytes <= limit) {
            bytes.max(4).div_ceil(16) * 16
        } else {
            class
        };
        if class > max {
            return Err(dev(WgpuError::LimitExceeded {
                what: "a tensor buffer".into(),
                requested: bytes,
                available: max,
            }));
        }
        let buffer = match st.free.get_mut(&class).and_then(Vec::pop) {
            Some(b) => b,
            None => {
                st.created += 1;
                self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("tensor"),
                    size: class,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }
        };
        st.live_buffers += 1;
        st.live_bytes += class;
        Ok(Arc::new(Buf {
            buffer,
            class,
            retired: self.retired.clone(),
        }))
    }

    fn tensor(&self, st: &mut State, shape: Shape, dtype: DType) -> Result<WTensor> {
        let buf = self.alloc(st, shape.numel() as u64 * 4)?;
        Ok(WTensor {
            buf,
            shape,
            dtype,
            host_u32: None,
        })
    }

    fn encoder<'a>(&self, st: &'a mut State) -> &'a mut Recorder {
        let full = st
            .encoder
            .as_ref()
            .is_some_and(|e| self.flush_every > 0 && e.dispatches() >= self.flush_every);
        if full {
            self.flush_locked(st);
        }
        st.encoder.get_or_insert_with(|| Recorder::new(&self.ctx))
    }

    /// Submits what was recorded; retired buffers become reusable, and the recorder's uniform
    /// pages and scratch buffers go back to the context's pools.
    pub fn flush(&self) {
        let mut st = self.lock();
        self.flush_locked(&mut st);
    }

    fn flush_locked(&self, st: &mut State) {
        if let Some(enc) = st.encoder.take() {
            enc.submit(&self.ctx);
        }
        let retired: Vec<(u64, wgpu::Buffer)> = match self.retired.lock() {
            Ok(mut r) => r.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for (class, b) in retired {
            st.live_buffers -= 1;
            st.live_bytes -= class;
            st.free.entry(class).or_default().push(b);
        }
    }

    /// Counts of live and pooled buffers (after submitting what is pending).
    pub fn pool_stats(&self) -> PoolStats {
        let mut st = self.lock();
        self.flush_locked(&mut st);
        let (scratch_buffers, scratch_bytes) = self.ctx.scratch_stats();
        let (n, bytes) = st.free.iter().fold((0, 0), |(n, b), (class, v)| {
            (n + v.len(), b + class * v.len() as u64)
        });
        PoolStats {
            live_buffers: st.live_buffers,
            live_bytes: st.live_bytes,
            pooled_buffers: n,
            pooled_bytes: bytes,
            created: st.created,
            scratch_buffers,
            scratch_bytes,
        }
    }

    /// Destroys every pooled (unused) buffer, the context's scratch buffers included.
    pub fn release_pool(&self) {
        let mut st = self.lock();
        self.flush_locked(&mut st);
        self.ctx.release_scratch();
        for (_, v) in st.free.drain() {
            for b in v {
                b.destroy();
            }
        }
    }

    fn f32_of(&self, op: &'static str, t: &WTensor) -> Result<()> {
        if t.dtype != DType::F32 {
            return Err(shape_err(op, "expected an f32 tensor, got u32".into()));
        }
        Ok(())
    }

    fn same(&self, op: &'static str, a: &WTensor, b: &WTensor) -> Result<()> {
        if a.shape != b.shape {
            return Err(shape_err(
                op,
                format!("shapes differ: {} and {}", a.shape, b.shape),
            ));
        }
        Ok(())
    }

    fn elementwise(&self, op: Op, a: &WTensor, b: Option<&WTensor>, alpha: f32) -> Result<WTensor> {
        let name = "elementwise";
        self.f32_of(name, a)?;
        let n = u32_of(name, a.numel())?;
        let mut st = self.lock();
        let out = self.tensor(&mut st, a.shape.clone(), DType::F32)?;
        if n > 0 {
            ops::elementwise::encode(
                &self.ctx,
                self.encoder(&mut st),
                op,
                n,
                alpha,
                0.0,
                a.b(),
                b.map(WTensor::b),
                out.b(),
            )
            .map_err(dev)?;
        }
        Ok(out)
    }

    /// A `(.., C)` tensor combined with a `(C,)` vector row by row (`encode` records it).
    fn per_feature(
        &self,
        op: &'static str,
        x: &WTensor,
        v: &WTensor,
        encode: PerFeature,
    ) -> Result<WTensor> {
        let (rows, c) = Self::rows_cols(x);
        if v.shape.dims() != [c] {
            return Err(shape_err(
                op,
                format!("{} does not match {}", v.shape, x.shape),
            ));
        }
        let mut st = self.lock();
        let out = self.tensor(&mut st, x.shape.clone(), DType::F32)?;
        if rows * c > 0 {
            encode(
                &self.ctx,
                self.encoder(&mut st),
                u32_of(op, rows)?,
                u32_of(op, c)?,
                x.b(),
                v.b(),
                out.b(),
            )
            .map_err(dev)?;
        }
        Ok(out)
    }

    /// `(rows, last)` of a tensor.
    fn rows_cols(t: &WTensor) -> (usize, usize) {
        let c = t.shape.dims().last().copied().unwrap_or(1);
        (t.numel() / c.max(1), c)
    }
}

/// A recorder of one `(rows, cols)` by `(cols,)` kernel ([`reduce::encode_add_bias`], …).
type PerFeature = fn(
    &Context,
    &mut Recorder,
    u32,
    u32,
    &wgpu::Buffer,
    &wgpu::Buffer,
    &wgpu::Buffer,
) -> std::result::Result<(), WgpuError>;

impl Backend for Wgpu {
    type Tensor = WTensor;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn shape(&self, t: &WTensor) -> Shape {
        t.shape.clone()
    }

    fn upload(&self, data: &[f32], shape: &Shape) -> Result<WTensor> {
        if data.len() != shape.numel() {
            return Err(shape_err(
                "upload",
                format!("{} values for shape {shape}", data.len()),
            ));
        }
        let mut st = self.lock();
        let t = self.tensor(&mut st, shape.clone(), DType::F32)?;
        if !data.is_empty() {
            self.ctx
                .queue
                .write_buffer(t.b(), 0, bytemuck::cast_slice(data));
        }
        Ok(t)
    }

    fn upload_u32(&self, data: &[u32], shape: &Shape) -> Result<WTensor> {
        if data.len() != shape.numel() {
            return Err(shape_err(
                "upload_u32",
                format!("{} values for shape {shape}", data.len()),
            ));
        }
        let mut st = self.lock();
        let mut t = self.tensor(&mut st, shape.clone(), DType::U32)?;
        if !data.is_empty() {
            self.ctx
                .queue
                .write_buffer(t.b(), 0, bytemuck::cast_slice(data));
        }
        t.host_u32 = Some(Arc::new(data.to_vec()));
        Ok(t)
    }

    fn download(&self, t: &WTensor) -> impl std::future::Future<Output = Result<Vec<f32>>> {
        let t = t.clone();
        let this = self.clone();
        async move {
            if t.dtype != DType::F32 {
                return Err(shape_err(
                    "download",
                    "only f32 tensors are read back".into(),
                ));
            }
            this.flush();
            let out = this.ctx.read_f32(t.b(), t.numel()).await.map_err(dev)?;
            if let Some(e) = this.ctx.take_error() {
                return Err(BackendError::Device {
                    backend: "wgpu",
                    msg: e,
                });
            }
            Ok(out)
        }
    }

    fn flush(&self) {
        Wgpu::flush(self);
    }

    fn zeros(&self, shape: &Shape) -> Result<WTensor> {
        let mut st = self.lock();
        let t = self.tensor(&mut st, shape.clone(), DType::F32)?;
        let size = t.buf.class;
        self.encoder(&mut st).clear_buffer(t.b(), 0, Some(size));
        Ok(t)
    }

    fn reshape(&self, t: &WTensor, shape: &Shape) -> Result<WTensor> {
        if shape.numel() != t.numel() {
            return Err(shape_err(
                "reshape",
                format!("{} to {shape}: element counts differ", t.shape),
            ));
        }
        Ok(WTensor {
            shape: shape.clone(),
            ..t.clone()
        })
    }

    fn matmul(&self, a: &WTensor, b: &WTensor, ta: bool, tb: bool) -> Result<WTensor> {
        let op = "matmul";
        self.f32_of(op, a)?;
        self.f32_of(op, b)?;
        let (ad, bd) = (a.shape.dims(), b.shape.dims());
        if ad.len() < 2 || bd.len() < 2 {
            return Err(shape_err(
                op,
                format!("needs matrices, got {} and {}", a.shape, b.shape),
            ));
        }
        let (ar, ac) = (ad[ad.len() - 2], ad[ad.len() - 1]);
        let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
        let (br, bc) = (bd[bd.len() - 2], bd[bd.len() - 1]);
        let (k2, n) = if tb { (bc, br) } else { (br, bc) };
        if k != k2 {
            return Err(shape_err(
                op,
                format!(
                    "inner dims differ: {} @ {} (ta {ta}, tb {tb})",
                    a.shape, b.shape
                ),
            ));
        }
        let batch_dims = &ad[..ad.len() - 2];
        let batch: usize = batch_dims.iter().product();
        let shared = bd.len() == 2;
        if !shared && &bd[..bd.len() - 2] != batch_dims {
            return Err(shape_err(
                op,
                format!("batch dims differ: {} @ {}", a.shape, b.shape),
            ));
        }
        let mut out_dims = batch_dims.to_vec();
        out_dims.extend([m, n]);
        let dims = if shared && !ta {
            matmul::Dims {
                batch: 1,
                m: u32_of(op, batch * m)?,
                n: u32_of(op, n)?,
                k: u32_of(op, k)?,
                ta,
                tb,
                b_shared: true,
            }
        } else {
            matmul::Dims {
                batch: u32_of(op, batch)?,
                m: u32_of(op, m)?,
                n: u32_of(op, n)?,
                k: u32_of(op, k)?,
                ta,
                tb,
                b_shared: shared,
            }
        };
        let mut st = self.lock();
        let out = self.tensor(&mut st, Shape::new(out_dims), DType::F32)?;
        if k == 0 {
            let size = out.buf.class;
            self.encoder(&mut st).clear_buffer(out.b(), 0, Some(size));
            return Ok(out);
        }
        matmul::encode(
            &self.ctx,
            self.encoder(&mut st),
            &dims,
            a.b(),
            b.b(),
            None,
            out.b(),
        )
        .map_err(dev)?;
        Ok(out)
    }

    fn add_bias(&self, x: &WTensor, bias: &WTensor) -> Result<WTensor> {
        self.per_feature("add_bias", x, bias, reduce::encode_add_bias)
    }

    fn scale_features(&self, x: &WTensor, s: &WTensor) -> Result<WTensor> {
        self.per_feature("scale_features", x, s, reduce::encode_scale_features)
    }

    fn sum_to_last(&self, x: &WTensor) -> Result<WTensor> {
        let (rows, c) = Self::rows_cols(x);
        let mut st = self.lock();
        let out = self.tensor(&mut st, Shape::new([c]), DType::F32)?;
        reduce::encode_sum_to_last(
            &self.ctx,
            self.encoder(&mut st),
            u32_of("sum_to_last", rows)?,
            u32_of("sum_to_last", c)?,
            x.b(),
            out.b(),
        )
        .map_err(dev)?;
        Ok(out)
    }

    fn add(&self, a: &WTensor, b: &WTensor) -> Result<WTensor> {
        self.same("add", a, b)?;
        self.elementwise(Op::Add, a, Some(b), 0.0)
    }

    fn mul(&self, a: &WTensor, b: &WTensor) -> Result<WTensor> {
        self.same("mul", a, b)?;
        self.elementwise(Op::Mul, a, Some(b), 0.0)
    }

    fn scale(&self, a: &WTensor, s: f32) -> Result<WTensor> {
        self.elementwise(Op::Scale, a, None, s)
    }

    fn scale_by(&self, a: &WTensor, s: &WTensor) -> Result<WTensor> {
        if s.numel() != 1 {
            return Err(shape_err(
                "scale_by",
                format!("the scale must have one element, got {}", s.shape),
            ));
        }
        self.elementwise(Op::ScaleBy, a, Some(s), 0.0)
    }

    fn activation(&self, x: &WTensor, act: Activation) -> Result<WTensor> {
        let op = match act {
            Activation::Gelu => Op::Gelu,
            Activation::GeluTanh => Op::GeluTanh,
            Activation::Silu => Op::Silu,
            Activation::Relu => Op::Relu,
        };
        self.elementwise(op, x, None, 0.0)
    }

    fn activation_backward(&self, x: &WTensor, dy: &WTensor, act: Activation) -> Result<WTensor> {
        self.same("activation_backward", x, dy)?;
        let op = match act {
            Activation::Gelu => Op::GeluBackward,
            Activation::GeluTanh => Op::GeluTanhBackward,
            Activation::Silu => Op::SiluBackward,
            Activation::Relu => Op::ReluBackward,
        };
        self.elementwise(op, x, Some(dy), 0.0)
    }

    fn tanh(&self, x: &WTensor) -> Result<WTensor> {
        self.elementwise(Op::Tanh, x, None, 0.0)
    }

    fn tanh_backward(&self, y: &WTensor, dy: &WTensor) -> Result<WTensor> {
        self.same("tanh_backward", y, dy)?;
        self.elementwise(Op::TanhBackward, y, Some(dy), 0.0)
    }

    fn layer_norm(
        &self,
        x: &WTensor,
        gamma: &WTensor,
        beta: &WTensor,
        eps: f32,
    ) -> Result<(WTensor, LayerNormSaved<WTensor>)> {
        let (rows, c) = Self::rows_cols(x);
        if gamma.shape.dims() != [c] || beta.shape.dims() != [c] {
            return Err(shape_err(
                "layer_norm",
                format!(
                    "gamma {} / beta {} do not match {}",
                    gamma.shape, beta.shape, x.shape
                ),
            ));
        }
        let mut st = self.lock();
        let y = self.tensor(&mut st, x.shape.clone(), DType::F32)?;
        let mean = self.tensor(&mut st, Shape::new([rows]), DType::F32)?;
        let rstd = self.tensor(&mut st, Shape::new([rows]), DType::F32)?;
        layer_norm::encode_forward(
            &self.ctx,
            self.encoder(&mut st),
            u32_of("layer_norm", rows)?,
            u32_of("layer_norm", c)?,
            eps,
            [x.b(), gamma.b(), beta.b()],
            [y.b(), mean.b(), rstd.b()],
        )
        .map_err(dev)?;
        Ok((y, LayerNormSaved { mean, rstd }))
    }

    fn layer_norm_backward(
        &self,
        x: &WTensor,
        gamma: &WTensor,
        saved: &LayerNormSaved<WTensor>,
        dy: &WTensor,
    ) -> Result<(WTensor, WTensor, WTensor)> {
        self.same("layer_norm_backward", x, dy)?;
        let (rows, c) = Self::rows_cols(x);
        let mut st = self.lock();
        let dx = self.tensor(&mut st, x.shape.clone(), DType::F32)?;
        let dgamma = self.tensor(&mut st, Shape::new([c]), DType::F32)?;
        let dbeta = self.tensor(&mut st, Shape::new([c]), DType::F32)?;
        let enc = self.encoder(&mut st);
        let dparams = enc.scratch(&self.ctx, 2 * c as u64);
        layer_norm::encode_backward(
            &self.ctx,
            enc,
            u32_of("layer_norm_backward", rows)?,
            u32_of("layer_norm_backward", c)?,
            [x.b(), gamma.b(), saved.mean.b(), saved.rstd.b(), dy.b()],
            dx.b(),
            &dparams,
        )
        .map_err(dev)?;
        let bytes = c as u64 * 4;
        if bytes > 0 {
            enc.copy_buffer_to_buffer(&dparams, 0, dgamma.b(), 0, bytes);
            enc.copy_buffer_to_buffer(&dparams, bytes, dbeta.b(), 0, bytes);
        }
        Ok((dx, dgamma, dbeta))
    }

    fn attention(
        &self,
        q: &WTensor,
        k: &WTensor,
        v: &WTensor,
        heads: usize,
        key_mask: Option<&WTensor>,
        causal: bool,
    ) -> Result<(WTensor, WTensor)> {
        let d = self.attn_dims(q, k, v, heads, key_mask, causal)?;
        let mut st = self.lock();
        let out = self.tensor(&mut st, q.shape.clone(), DType::F32)?;
        let lse = self.tensor(
            &mut st,
            Shape::new([d.batch as usize, heads, d.t as usize]),
            DType::F32,
        )?;
        attention::encode_forward(
            &self.ctx,
            self.encoder(&mut st),
            &d,
            [q.b(), k.b(), v.b()],
            key_mask.map(WTensor::b),
            out.b(),
            lse.b(),
        )
        .map_err(dev)?;
        Ok((out, lse))
    }

    fn attention_backward(
        &self,
        q: &WTensor,
        k: &WTensor,
        v: &WTensor,
        out: &WTensor,
        lse: &WTensor,
        d_out: &WTensor,
        heads: usize,
        key_mask: Option<&WTensor>,
        causal: bool,
    ) -> Result<(WTensor, WTensor, WTensor)> {
        let d = self.attn_dims(q, k, v, heads, key_mask, causal)?;
        let mut st = self.lock();
        let dq = self.tensor(&mut st, q.shape.clone(), DType::F32)?;
        let dk = self.tensor(&mut st, q.shape.clone(), DType::F32)?;
        let dv = self.tensor(&mut st, q.shape.clone(), DType::F32)?;
        attention::encode_backward(
            &self.ctx,
            self.encoder(&mut st),
            &d,
            [q.b(), k.b(), v.b(), out.b(), lse.b(), d_out.b()],
            key_mask.map(WTensor::b),
            [dq.b(), dk.b(), dv.b()],
        )
        .map_err(dev)?;
        Ok((dq, dk, dv))
    }

    fn embedding(&self, table: &WTensor, ids: &WTensor) -> Result<WTensor> {
        let op = "embedding";
        let td = table.shape.dims();
        if td.len() != 2 || ids.dtype != DType::U32 {
            return Err(shape_err(
                op,
                format!(
                    "needs a (V, C) table and u32 ids, got {} and {:?}",
                    table.shape, ids.dtype
                ),
            ));
        }
        let (vocab, c) = (td[0], td[1]);
        if let Some(host) = &ids.host_u32
            && let Some(bad) = host.iter().find(|&&i| i as usize >= vocab)
        {
            return Err(shape_err(
                op,
                format!("token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        let mut dims = ids.shape.dims().to_vec();
        dims.push(c);
        let n = ids.numel();
        let mut st = self.lock();
        let out = self.tensor(&mut st, Shape::new(dims), DType::F32)?;
        if n * c > 0 {
            embedding::encode_gather(
                &self.ctx,
                self.encoder(&mut st),
                u32_of(op, n)?,
                u32_of(op, c)?,
                u32_of(op, vocab)?,
                table.b(),
                ids.b(),
                out.b(),
            )
            .map_err(dev)?;
        }
        Ok(out)
    }

    fn embedding_backward(&self, ids: &WTensor, dy: &WTensor, vocab: usize) -> Result<WTensor> {
        let op = "embedding_backward";
        let host = ids.host_u32.as_ref().ok_or_else(|| {
            shape_err(
                op,
                "the ids must come from upload_u32 (their host copy orders the sums)".into(),
            )
        })?;
        let c = dy.shape.dims().last().copied().unwrap_or(0);
        if dy.numel() != host.len() * c {
            return Err(shape_err(
                op,
                format!("dy {} does not match {} ids", dy.shape, host.len()),
            ));
        }
        if let Some(bad) = host.iter().find(|&&i| i as usize >= vocab) {
            return Err(shape_err(
                op,
                format!("token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        let csr = embedding::Csr::from_ids(host);
        let mut st = self.lock();
        let out = self.tensor(&mut st, Shape::new([vocab, c]), DType::F32)?;
        let bufs = [
            ops::upload_u32(&self.ctx, "order", &csr.order),
            ops::upload_u32(&self.ctx, "starts", &csr.starts),
            ops::upload_u32(&self.ctx, "uniq", &csr.uniq),
        ];
        embedding::encode_scatter_add(
            &self.ctx,
            self.encoder(&mut st),
            u32_of(op, vocab)?,
            u32_of(op, c)?,
            [u32_of(op, csr.uniq.len())?, u32_of(op, csr.order.len())?],
            dy.b(),
            [&bufs[0], &bufs[1], &bufs[2]],
            out.b(),
        )
        .map_err(dev)?;
        let enc = self.encoder(&mut st);
        for b in bufs {
            enc.keep(b);
        }
        Ok(out)
    }

    fn concat_seq(&self, a: &WTensor, b: &WTensor) -> Result<WTensor> {
        let (ad, bd) = (a.shape.dims(), b.shape.dims());
        if ad.len() != 3 || bd.len() != 3 || ad[0] != bd[0] || ad[2] != bd[2] {
            return Err(shape_err(
                "concat_seq",
                format!(
                    "{} and {} are not (B, T, C) with equal B and C",
                    a.shape, b.shape
                ),
            ));
        }
        let mut st = self.lock();
        let out = self.tensor(
            &mut st,
            Shape::new([ad[0], ad[1] + bd[1], ad[2]]),
            DType::F32,
        )?;
        if out.numel() > 0 {
            sequence::encode_concat(
                &self.ctx,
                self.encoder(&mut st),
                u32_of("concat_seq", ad[0])?,
                u32_of("concat_seq", ad[1])?,
                u32_of("concat_seq", bd[1])?,
                u32_of("concat_seq", ad[2])?,
                a.b(),
                b.b(),
                out.b(),
            )
            .map_err(dev)?;
        }
        Ok(out)
    }

    fn slice_seq(&self, x: &WTensor, start: usize, len: usize) -> Result<WTensor> {
        let d = x.shape.dims();
        if d.len() != 3 || start + len > d[1] {
            return Err(shape_err(
                "slice_seq",
                format!("{start}..{} of {}", start + len, x.shape),
            ));
        }
        let mut st = self.lock();
        let out = self.tensor(&mut st, Shape::new([d[0], len, d[2]]), DType::F32)?;
        if out.numel() > 0 {
            sequence::encode_slice(
                &self.ctx,
                self.encoder(&mut st),
                u32_of("slice_seq", d[0])?,
                u32_of("slice_seq", d[1])?,
                u32_of("slice_seq", d[2])?,
                start as u32,
                len as u32,
                x.b(),
                out.b(),
            )
            .map_err(dev)?;
        }
        Ok(out)
    }

    fn cross_entropy_sum(&self, logits: &WTensor, labels: &WTensor) -> Result<WTensor> {
        let (rows, k) = self.ce_dims(logits, labels)?;
        let mut st = self.lock();
        let out = self.tensor(&mut st, Shape::new([1]), DType::F32)?;
        loss::encode_sum(
            &self.ctx,
            self.encoder(&mut st),
            rows,
            k,
            logits.b(),
            labels.b(),
            out.b(),
        )
        .map_err(dev)?;
        Ok(out)
    }

    fn cross_entropy_backward(
        &self,
        logits: &WTensor,
        labels: &WTensor,
        scale: f32,
    ) -> Result<WTensor> {
        let (rows, k) = self.ce_dims(logits, labels)?;
        let mut st = self.lock();
        let out = self.tensor(&mut st, logits.shape.clone(), DType::F32)?;
        loss::encode_backward(
            &self.ctx,
            self.encoder(&mut st),
            rows,
            k,
            scale,
            logits.b(),
            labels.b(),
            out.b(),
        )
        .map_err(dev)?;
        Ok(out)
    }

    fn sum_squares(&self, x: &WTensor) -> Result<WTensor> {
        let n = u32_of("sum_squares", x.numel())?;
        let mut st = self.lock();
        let out = self.tensor(&mut st, Shape::new([1]), DType::F32)?;
        reduce::encode_sum_squares(&self.ctx, self.encoder(&mut st), n, x.b(), out.b())
            .map_err(dev)?;
        Ok(out)
    }

    fn sum_squares_many(&self, xs: &[&WTensor]) -> Result<Option<WTensor>> {
        if xs.is_empty() {
            return Ok(None);
        }
        let mut bufs = Vec::with_capacity(xs.len());
        for x in xs {
            bufs.push((x.b(), u32_of("sum_squares", x.numel())?));
        }
        let mut st = self.lock();
        let out = self.tensor(&mut st, Shape::new([1]), DType::F32)?;
        reduce::encode_sum_squares_many(&self.ctx, self.encoder(&mut st), &bufs, out.b())
            .map_err(dev)?;
        Ok(Some(out))
    }

    fn adamw(
        &self,
        param: &WTensor,
        grad: &WTensor,
        m: &WTensor,
        v: &WTensor,
        grad_scale: f32,
        hp: AdamW,
    ) -> Result<(WTensor, WTensor, WTensor)> {
        for t in [grad, m, v] {
            self.same("adamw", param, t)?;
        }
        let n = u32_of("adamw", param.numel())?;
        let mut st = self.lock();
        let p2 = self.tensor(&mut st, param.shape.clone(), DType::F32)?;
        let m2 = self.tensor(&mut st, param.shape.clone(), DType::F32)?;
        let v2 = self.tensor(&mut st, param.shape.clone(), DType::F32)?;
        if n > 0 {
            optim::encode(
                &self.ctx,
                self.encoder(&mut st),
                n,
                &hp,
                grad_scale,
                [param.b(), grad.b(), m.b(), v.b()],
                [p2.b(), m2.b(), v2.b()],
            )
            .map_err(dev)?;
        }
        Ok((p2, m2, v2))
    }
}

impl Wgpu {
    fn attn_dims(
        &self,
        q: &WTensor,
        k: &WTensor,
        v: &WTensor,
        heads: usize,
        key_mask: Option<&WTensor>,
        causal: bool,
    ) -> Result<attention::Dims> {
        let op = "attention";
        if q.shape != k.shape || q.shape != v.shape || q.shape.dims().len() != 3 {
            return Err(shape_err(
                op,
                format!(
                    "q {}, k {}, v {} must have one (B, T, C) shape",
                    q.shape, k.shape, v.shape
                ),
            ));
        }
        let d = q.shape.dims();
        if heads == 0 || !d[2].is_multiple_of(heads) {
            return Err(shape_err(
                op,
                format!("{} channels do not split into {heads} heads", d[2]),
            ));
        }
        if let Some(m) = key_mask
            && m.shape.dims() != [d[0], d[1]]
        {
            return Err(shape_err(
                op,
                format!(
                    "key mask has shape {}, expected [{}, {}]",
                    m.shape, d[0], d[1]
                ),
            ));
        }
        Ok(attention::Dims {
            batch: u32_of(op, d[0])?,
            t: u32_of(op, d[1])?,
            heads: u32_of(op, heads)?,
            d: u32_of(op, d[2] / heads)?,
            causal,
        })
    }

    fn ce_dims(&self, logits: &WTensor, labels: &WTensor) -> Result<(u32, u32)> {
        let d = logits.shape.dims();
        if d.len() != 2 || labels.shape.dims() != [d[0]] || labels.dtype != DType::U32 {
            return Err(shape_err(
                "cross_entropy",
                format!(
                    "logits {} and labels {} ({:?}) do not fit (N, K) and (N,) u32",
                    logits.shape, labels.shape, labels.dtype
                ),
            ));
        }
        Ok((
            u32_of("cross_entropy", d[0])?,
            u32_of("cross_entropy", d[1])?,
        ))
    }
}
