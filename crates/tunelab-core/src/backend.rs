//! The `Backend` trait: the coarse, fused ops every device implements, each with its backward.
//!
//! Model, PEFT and trainer code never call a backend directly; they record ops on a
//! [`Tape`](crate::tape::Tape), which calls these. Ops are coarse on purpose (a fused
//! attention, a fused softmax-cross-entropy) so WebGPU dispatch counts stay low.
//!
//! Conventions (row-major, f32 unless said):
//! - hidden states are `(B, T, C)`; a linear layer's weight is `(out, in)` as in PyTorch;
//! - attention takes `q, k, v` as `(B, T, H*D)` and splits heads itself;
//! - token ids and labels are `u32`; label [`IGNORE_INDEX`] is skipped by the loss.

use crate::Shape;
use std::future::Future;

/// Label value that the loss skips (PyTorch's `-100` as `u32`).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// The activation functions of the models' MLPs and heads, by their `hidden_act` names in
/// transformers' configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `x Φ(x)`, the exact erf form (`gelu`).
    Gelu,
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))` (`gelu_new`, `gelu_pytorch_tanh`:
    /// GPT-2's).
    GeluTanh,
    /// `x σ(x)` (`silu`, `swish`: Llama's gated MLP).
    Silu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Every activation, for tests and messages.
    pub const ALL: [Activation; 4] = [Self::Gelu, Self::GeluTanh, Self::Silu, Self::Relu];

    /// The activation a config's `hidden_act` (or `activation_function`) names.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "silu" | "swish" => Some(Self::Silu),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }

    /// The `hidden_act` names [`Activation::from_hf`] reads.
    pub const HF_NAMES: &'static [&'static str] = &[
        "gelu",
        "gelu_new",
        "gelu_pytorch_tanh",
        "gelu_fast",
        "silu",
        "swish",
        "relu",
    ];
}

/// Errors raised by backend ops. They name the op and the offending shapes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// Inputs whose shapes do not fit the op.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A failure inside the device library.
    #[error("{backend}: {msg}")]
    Device { backend: &'static str, msg: String },
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// Hyper-parameters of one AdamW update (PyTorch semantics: decoupled weight decay, bias
/// correction, `eps` added after the square root). Kept in f64 like PyTorch's Python floats:
/// `1 - beta2` must be computed before rounding to f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1-based step number, for bias correction.
    pub step: u32,
}

/// What the forward pass of layer norm keeps for its backward, one value per row in a
/// backend-defined layout.
#[derive(Debug, Clone)]
pub struct LayerNormSaved<T> {
    /// Per-row mean.
    pub mean: T,
    /// Per-row `1 / sqrt(var + eps)`.
    pub rstd: T,
}

/// `Send + Sync` natively, where a step's passes may run on several threads
/// ([`Backend::run_concurrently`]); nothing in WebAssembly, where the GPU backend's handles
/// are bound to their thread.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync> MaybeSync for T {}
/// `Send + Sync` natively, where a step's passes may run on several threads
/// ([`Backend::run_concurrently`]); nothing in WebAssembly, where the GPU backend's handles
/// are bound to their thread.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSync {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSync for T {}

/// A compute device with its tensors.
pub trait Backend: Clone + std::fmt::Debug + MaybeSync + 'static {
    /// A dense tensor on the device (f32 or u32).
    type Tensor: Clone + std::fmt::Debug + MaybeSync;

    /// A short name for messages (`candle-cpu`, `wgpu`).
    fn name(&self) -> &'static str;
    fn shape(&self, t: &Self::Tensor) -> Shape;

    // ---- data movement -------------------------------------------------------------------
    fn upload(&self, data: &[f32], shape: &Shape) -> Result<Self::Tensor>;
    fn upload_u32(&self, data: &[u32], shape: &Shape) -> Result<Self::Tensor>;
    /// Reads an f32 tensor back. Only for results, scalars and saving.
    fn download(&self, t: &Self::Tensor) -> impl Future<Output = Result<Vec<f32>>>;
    /// Starts the work recorded so far without waiting for it, so the device runs it while
    /// the host records what follows (GPU backends submit their pending commands). Backends
    /// that compute eagerly have nothing to do.
    fn flush(&self) {}
    /// How many micro-batches of one step this backend runs at once with
    /// [`Backend::run_concurrently`] (1, the default: one after another, each op using the
    /// whole device). The trainer splits a batch into this many parts.
    fn concurrent_passes(&self) -> usize {
        1
    }
    /// Runs `f(0)`, ..., `f(n - 1)`, independent forward and backward passes, and returns
    /// their results in order: at once, each on its own share of the device, where
    /// [`Backend::concurrent_passes`] is more than 1; by default one after another.
    #[cfg(not(target_arch = "wasm32"))]
    fn run_concurrently<R: Send>(&self, n: usize, f: &(dyn Fn(usize) -> R + Sync)) -> Vec<R> {
        (0..n).map(f).collect()
    }
    fn zeros(&self, shape: &Shape) -> Result<Self::Tensor>;
    /// The same data seen with another shape of equal element count.
    fn reshape(&self, t: &Self::Tensor, shape: &Shape) -> Result<Self::Tensor>;

    // ---- linear algebra ------------------------------------------------------------------
    /// `op(a) @ op(b)` where `op` transposes the last two dims when its flag is set.
    /// `a` is `(.., M, K)`; `b` is `(K, N)` (shared across the batch) or `(.., K, N)`.
    fn matmul(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        ta: bool,
        tb: bool,
    ) -> Result<Self::Tensor>;
    /// `c + op(a) @ op(b)` for `c` of the product's shape: how the tape adds a product to a
    /// gradient that already holds another contribution (a layer input read by several
    /// projections, a residual stream). A backend can add the product onto `c` in one pass;
    /// the default adds the two.
    fn matmul_add(
        &self,
        c: &Self::Tensor,
        a: &Self::Tensor,
        b: &Self::Tensor,
        ta: bool,
        tb: bool,
    ) -> Result<Self::Tensor> {
        let p = self.matmul(a, b, ta, tb)?;
        self.add(c, &p)
    }
    /// `x @ w^T + bias`, PyTorch's `nn.Linear`: `x (.., K)`, `w (N, K)`, `bias (N,)`. By
    /// default a [`Backend::matmul`] then [`Backend::add_bias`]; a backend can start the
    /// product's output from the bias rows instead, saving a pass over the output.
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor> {
        let y = self.matmul(x, w, false, true)?;
        match bias {
            Some(b) => self.add_bias(&y, b),
            None => Ok(y),
        }
    }
    /// `x + bias` with `bias` of shape `(C,)` broadcast over the leading dims of `x`.
    fn add_bias(&self, x: &Self::Tensor, bias: &Self::Tensor) -> Result<Self::Tensor>;
    /// Sum over every dim but the last: `(.., C) -> (C,)`. The gradient of a bias.
    fn sum_to_last(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    // ---- elementwise ---------------------------------------------------------------------
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    fn mul(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    fn scale(&self, a: &Self::Tensor, s: f32) -> Result<Self::Tensor>;
    /// `x * s` with `s` of shape `(C,)` broadcast over the leading dims of `x (.., C)`: every
    /// feature scaled by its own factor (IA3's learned vectors). Its backward is this op on
    /// the gradient and [`Backend::sum_to_last`] of `dy * x`.
    fn scale_features(&self, x: &Self::Tensor, s: &Self::Tensor) -> Result<Self::Tensor>;
    /// `a * s` with `s` a one-element tensor (an upstream scalar gradient kept on the device).
    fn scale_by(&self, a: &Self::Tensor, s: &Self::Tensor) -> Result<Self::Tensor>;
    /// An activation function, value by value.
    fn activation(&self, x: &Self::Tensor, act: Activation) -> Result<Self::Tensor>;
    /// `dy * act'(x)`.
    fn activation_backward(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        act: Activation,
    ) -> Result<Self::Tensor>;
    fn tanh(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// `dy * (1 - y^2)` from the forward output `y`.
    fn tanh_backward(&self, y: &Self::Tensor, dy: &Self::Tensor) -> Result<Self::Tensor>;

    // ---- normalisation -------------------------------------------------------------------
    /// Layer norm over the last dim: `y = (x - mean) * rstd * gamma + beta`.
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
    ) -> Result<(Self::Tensor, LayerNormSaved<Self::Tensor>)>;
    /// Returns `(dx, dgamma, dbeta)`.
    fn layer_norm_backward(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        saved: &LayerNormSaved<Self::Tensor>,
        dy: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)>;

    // ---- attention -----------------------------------------------------------------------
    /// Scaled dot-product attention over `heads` heads. `q, k, v`: `(B, T, H*D)`,
    /// `key_mask`: `(B, T)` with 1 for real tokens and 0 for padding, `causal` masks future
    /// keys. Returns the output `(B, T, H*D)` and what the backward pass needs, which the
    /// backend chooses: the row log-sum-exp `(B, H, T)`, from which it rebuilds the
    /// probabilities, or the probabilities themselves `(B, H, T, T)` (the candle CPU kernel's
    /// choice while they are small). Callers pass it to [`Backend::attention_backward`]
    /// unchanged. Where [`Backend::attention_query_subset`] is true, `q` may have fewer
    /// positions than `k` and `v` when not causal, `(B, Tq, H*D)` with `Tq ≤ T`: each query
    /// attends to every key (queries carry no position in attention), and the output is
    /// `(B, Tq, H*D)`, the saved tensor `(B, H, Tq)` or `(B, H, Tq, T)`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: usize,
        key_mask: Option<&Self::Tensor>,
        causal: bool,
    ) -> Result<(Self::Tensor, Self::Tensor)>;
    /// Whether [`Backend::attention`] and its backward take fewer queries than keys.
    fn attention_query_subset(&self) -> bool {
        false
    }
    /// Returns `(dq, dk, dv)`; `saved` is the second tensor [`Backend::attention`] returned.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        out: &Self::Tensor,
        saved: &Self::Tensor,
        d_out: &Self::Tensor,
        heads: usize,
        key_mask: Option<&Self::Tensor>,
        causal: bool,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)>;

    // ---- embeddings ----------------------------------------------------------------------
    /// Rows of `table (V, C)` picked by `ids (..)` (u32): `(.., C)`.
    fn embedding(&self, table: &Self::Tensor, ids: &Self::Tensor) -> Result<Self::Tensor>;
    /// Scatter-add of `dy (.., C)` into a zero `(vocab, C)` at `ids`. Deterministic.
    fn embedding_backward(
        &self,
        ids: &Self::Tensor,
        dy: &Self::Tensor,
        vocab: usize,
    ) -> Result<Self::Tensor>;

    // ---- sequence axis -------------------------------------------------------------------
    /// Concatenates `(B, Ta, C)` and `(B, Tb, C)` into `(B, Ta+Tb, C)`.
    fn concat_seq(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// Positions `start..start+len` of `(B, T, C)`.
    fn slice_seq(&self, x: &Self::Tensor, start: usize, len: usize) -> Result<Self::Tensor>;

    // ---- loss ----------------------------------------------------------------------------
    /// Softmax cross-entropy of `logits (N, K)` against `labels (N,)` (u32, [`IGNORE_INDEX`]
    /// skipped), summed over rows: a `(1,)` tensor. Never materialises the probabilities.
    fn cross_entropy_sum(
        &self,
        logits: &Self::Tensor,
        labels: &Self::Tensor,
    ) -> Result<Self::Tensor>;
    /// `scale * (softmax(logits) - onehot(labels))`, zero on ignored rows.
    fn cross_entropy_backward(
        &self,
        logits: &Self::Tensor,
        labels: &Self::Tensor,
        scale: f32,
    ) -> Result<Self::Tensor>;

    // ---- optimiser -----------------------------------------------------------------------
    /// `sum(x^2)` as a `(1,)` tensor (for the global gradient norm).
    fn sum_squares(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// The sum of `sum(x^2)` over every tensor, as a `(1,)` tensor; None without tensors.
    /// The global gradient norm's square. By default one [`Backend::sum_squares`] and one add
    /// per tensor; backends may fold all tensors' partial sums together.
    fn sum_squares_many(&self, xs: &[&Self::Tensor]) -> Result<Option<Self::Tensor>> {
        let mut total: Option<Self::Tensor> = None;
        for x in xs {
            let s = self.sum_squares(x)?;
            total = Some(match total {
                None => s,
                Some(t) => self.add(&t, &s)?,
            });
        }
        Ok(total)
    }
    /// One AdamW step with the gradient pre-multiplied by `grad_scale` (clipping). Returns the
    /// new `(param, m, v)`.
    fn adamw(
        &self,
        param: &Self::Tensor,
        grad: &Self::Tensor,
        m: &Self::Tensor,
        v: &Self::Tensor,
        grad_scale: f32,
        hp: AdamW,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)>;
}
