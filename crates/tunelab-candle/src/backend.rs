//! [`Backend`] on candle-core tensors: the reference implementation.
//!
//! Only candle's tensor ops and kernels are used; candle's autograd never is (its fused
//! `layer_norm`/`softmax_last_dim` have no backward). Every backward here is written out and
//! tested against finite differences.

use candle_core::{D, DType, Device, Tensor};
use tunelab_core::Shape;
use tunelab_core::backend::{
    Activation, AdamW, Backend, BackendError, IGNORE_INDEX, LayerNormSaved, Result,
};

/// The candle backend on one device.
#[derive(Debug, Clone)]
pub struct Candle {
    device: Device,
    /// On the CPU, use the fused kernels of [`crate::cpu`] (and the SIMD128 matmul in wasm).
    fused: bool,
}

impl Candle {
    pub fn new(device: Device) -> Self {
        Self {
            device,
            fused: true,
        }
    }

    pub fn cpu() -> Self {
        Self::new(Device::Cpu)
    }

    /// The CPU with candle's tensor ops only, as the CUDA device runs them: tests check the
    /// GPU path's math, and the fused CPU kernels, against it.
    pub fn cpu_composite() -> Self {
        Self {
            device: Device::Cpu,
            fused: false,
        }
    }

    /// Whether this op runs a fused CPU kernel. Every op asks this first; on the CPU it also
    /// keeps the pool's other threads looking for work until the op's parallel parts reach
    /// them (see [`crate::cpu::spin`]).
    fn fused(&self) -> bool {
        let fused = self.fused && self.device.is_cpu();
        #[cfg(all(parallel, not(target_arch = "wasm32")))]
        if fused {
            crate::cpu::spin::keep_awake();
        }
        fused
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

fn err(e: candle_core::Error) -> BackendError {
    BackendError::Device {
        backend: "candle",
        msg: e.to_string(),
    }
}

trait Ctx<T> {
    fn c(self) -> Result<T>;
}

impl<T> Ctx<T> for candle_core::Result<T> {
    fn c(self) -> Result<T> {
        self.map_err(err)
    }
}

/// An accumulator `c` that is not of the product's shape (`rows` then `n` columns).
fn onto_err(c: &Tensor, rows: &[usize], n: usize) -> BackendError {
    shape_err(
        "matmul_add",
        format!(
            "the accumulator has shape {:?}, expected the product's {rows:?} x {n}",
            c.dims()
        ),
    )
}

fn shape_err(op: &'static str, msg: String) -> BackendError {
    BackendError::Shape { op, msg }
}

/// `(B, T, H*D) -> (B, H, T, D)`, contiguous.
fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, c) = x.dims3().c()?;
    if heads == 0 || !c.is_multiple_of(heads) {
        return Err(shape_err(
            "attention",
            format!("hidden size {c} is not divisible by {heads} heads"),
        ));
    }
    x.reshape((b, t, heads, c / heads))
        .c()?
        .transpose(1, 2)
        .c()?
        .contiguous()
        .c()
}

/// `(B, H, T, D) -> (B, T, H*D)`.
fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4().c()?;
    x.transpose(1, 2)
        .c()?
        .contiguous()
        .c()?
        .reshape((b, t, h * d))
        .c()
}

/// The most attention probabilities (`B × H × Tq × T` values, 32 MiB) the fused CPU forward
/// saves for its backward; above it the backward recomputes them from the log-sum-exp. Saving
/// spares the backward one of its five per-head products and an exponential per score;
/// MiniLM's 8 × 128 batch keeps 6 MiB a layer.
const SAVED_PROBS_MAX: usize = 1 << 23;

/// `q (B, Tq, C)`, `k` and `v` `(B, T, C)`: at most as many queries as keys, as many when
/// `causal` (see [`Backend::attention_query_subset`]).
fn check_attention_shapes(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<()> {
    let (qd, kd) = (q.dims(), k.dims());
    let fits = qd.len() == 3
        && kd.len() == 3
        && (qd[0], qd[2]) == (kd[0], kd[2])
        && qd[1] <= kd[1]
        && (!causal || qd[1] == kd[1]);
    if !fits || k.dims() != v.dims() {
        return Err(shape_err(
            "attention",
            format!(
                "q {qd:?}, k {kd:?}, v {:?}: k and v must have one shape (B, T, C), q (B, Tq, C) \
                 with Tq ≤ T (Tq = T when causal)",
                v.dims()
            ),
        ));
    }
    Ok(())
}

impl Candle {
    /// `a @ b` (batched when both have batch dims): in wasm on the CPU through this crate's
    /// SIMD128 kernel, which beats gemm's there (see `sgemm`); on x86-64 CPUs through gemm's
    /// kernels called directly (`sgemm::gemm_fresh`: the output is not zero-filled first);
    /// elsewhere candle's (gemm natively, cuBLAS on CUDA).
    /// With `onto`, `onto + a @ b` (`onto` of the product's shape), the product added onto a
    /// copy of it on the fused CPU path.
    fn mm(&self, a: &Tensor, b: &Tensor, onto: Option<&Tensor>) -> Result<Tensor> {
        if self.fused() {
            let y = match onto {
                None => crate::sgemm::matmul(a, b),
                Some(c) => crate::sgemm::matmul_onto(c, a, b),
            };
            if let Some(y) = y.c()? {
                return Ok(y);
            }
        }
        let y = match a.matmul(b) {
            Ok(y) => y,
            Err(_) => a.contiguous().c()?.matmul(&b.contiguous().c()?).c()?,
        };
        match onto {
            Some(c) => self.add(c, &y),
            None => Ok(y),
        }
    }

    /// [`Backend::matmul`], added onto `onto` where given.
    fn product(
        &self,
        a: &Tensor,
        b: &Tensor,
        ta: bool,
        tb: bool,
        onto: Option<&Tensor>,
    ) -> Result<Tensor> {
        let a = if ta { a.t().c()? } else { a.clone() };
        let b = if tb { b.t().c()? } else { b.clone() };
        let (ka, kb) = (a.dims()[a.rank() - 1], b.dims()[b.rank() - 2]);
        if ka != kb {
            return Err(shape_err(
                "matmul",
                format!("inner dims differ: {:?} @ {:?}", a.dims(), b.dims()),
            ));
        }
        if b.rank() == 2 && a.rank() > 2 {
            // Shared weight: fold the batch into the rows for one large product.
            let dims = a.dims().to_vec();
            let rows: usize = dims[..dims.len() - 1].iter().product();
            // gemm and sgemm read a transposed 2-D weight through its strides: no copy of it.
            let a2 = a.contiguous().c()?.reshape((rows, ka)).c()?;
            let n = b.dims()[1];
            let lead = &dims[..dims.len() - 1];
            let onto = match onto {
                Some(c) if c.dims().split_last() == Some((&n, lead)) => {
                    Some(c.reshape((rows, n)).c()?)
                }
                Some(c) => return Err(onto_err(c, lead, n)),
                None => None,
            };
            let y = self.mm(&a2, &b, onto.as_ref())?;
            let mut out = dims;
            let last = out.len() - 1;
            out[last] = n;
            y.reshape(out).c()
        } else {
            self.mm(&a, &b, onto)
        }
    }

    /// Scaled scores `(B, H, Tq, T)` with padding and causal masks added.
    fn scores(
        &self,
        q: &Tensor,
        k: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor> {
        let (b, _h, _tq, d) = q.dims4().c()?;
        let t = k.dims4().c()?.2;
        let scale = 1.0 / (d as f64).sqrt();
        self.check_key_mask(mask, b, t)?;
        let mut s = q.matmul(&k.t().c()?).c()?.affine(scale, 0.0).c()?;
        if let Some(m) = mask {
            // (1 - m) * MIN: the additive mask transformers builds from an attention mask.
            let bias = m
                .affine(-1.0, 1.0)
                .c()?
                .affine(f64::from(f32::MIN), 0.0)
                .c()?
                .reshape((b, 1, 1, t))
                .c()?;
            s = s.broadcast_add(&bias).c()?;
        }
        if causal {
            let mut bias = vec![0f32; t * t];
            for i in 0..t {
                for j in i + 1..t {
                    bias[i * t + j] = f32::MIN;
                }
            }
            let bias = Tensor::from_vec(bias, (1, 1, t, t), &self.device).c()?;
            s = s.broadcast_add(&bias).c()?;
        }
        Ok(s)
    }

    fn check_key_mask(&self, mask: Option<&Tensor>, b: usize, t: usize) -> Result<()> {
        match mask {
            Some(m) if m.dims() != [b, t] => Err(shape_err(
                "attention",
                format!("key mask has shape {:?}, expected [{b}, {t}]", m.dims()),
            )),
            _ => Ok(()),
        }
    }

    fn labels_mask(&self, labels: &Tensor) -> Result<(Tensor, Tensor)> {
        let labels = labels.flatten_all().c()?;
        let ignore = Tensor::full(IGNORE_INDEX, labels.dims(), &self.device).c()?;
        let valid = labels.ne(&ignore).c()?;
        let zeros = labels.zeros_like().c()?;
        let safe = valid.where_cond(&labels, &zeros).c()?;
        Ok((safe, valid.to_dtype(DType::F32).c()?))
    }

    fn check_logits(&self, logits: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
        let (n, k) = logits.dims2().c()?;
        if labels.elem_count() != n {
            return Err(shape_err(
                "cross_entropy",
                format!("{} labels for {n} rows of logits", labels.elem_count()),
            ));
        }
        Ok((n, k))
    }
}

impl Backend for Candle {
    type Tensor = Tensor;

    fn name(&self) -> &'static str {
        if self.device.is_cuda() {
            "candle-cuda"
        } else {
            "candle-cpu"
        }
    }

    fn shape(&self, t: &Tensor) -> Shape {
        Shape::new(t.dims())
    }

    fn upload(&self, data: &[f32], shape: &Shape) -> Result<Tensor> {
        if data.len() != shape.numel() {
            return Err(shape_err(
                "upload",
                format!("{} values for shape {shape}", data.len()),
            ));
        }
        Tensor::from_slice(data, shape.dims(), &self.device).c()
    }

    fn upload_u32(&self, data: &[u32], shape: &Shape) -> Result<Tensor> {
        if data.len() != shape.numel() {
            return Err(shape_err(
                "upload",
                format!("{} values for shape {shape}", data.len()),
            ));
        }
        Tensor::from_slice(data, shape.dims(), &self.device).c()
    }

    async fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        t.flatten_all().c()?.to_dtype(DType::F32).c()?.to_vec1().c()
    }

    fn zeros(&self, shape: &Shape) -> Result<Tensor> {
        Tensor::zeros(shape.dims(), DType::F32, &self.device).c()
    }

    fn reshape(&self, t: &Tensor, shape: &Shape) -> Result<Tensor> {
        if t.elem_count() != shape.numel() {
            return Err(shape_err(
                "reshape",
                format!("cannot view {:?} as {shape}", t.dims()),
            ));
        }
        t.reshape(shape.dims()).c()
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        self.product(a, b, ta, tb, None)
    }

    fn matmul_add(&self, c: &Tensor, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        self.product(a, b, ta, tb, Some(c))
    }

    fn attention_query_subset(&self) -> bool {
        true
    }

    /// On the CPU natively, one pass per thread of the calling thread's pool (see
    /// [`crate::cpu::passes`]); 1 on CUDA and in wasm.
    fn concurrent_passes(&self) -> usize {
        #[cfg(all(parallel, not(target_arch = "wasm32")))]
        if self.fused && self.device.is_cpu() {
            return crate::cpu::passes::passes();
        }
        1
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn run_concurrently<R: Send>(&self, n: usize, f: &(dyn Fn(usize) -> R + Sync)) -> Vec<R> {
        #[cfg(parallel)]
        if self.fused && self.device.is_cpu() {
            return crate::cpu::passes::run(n, f);
        }
        (0..n).map(f).collect()
    }

    fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if self.fused()
            && let Some(y) = crate::sgemm::linear(x, w, bias).c()?
        {
            return Ok(y);
        }
        let y = self.matmul(x, w, false, true)?;
        match bias {
            Some(b) => self.add_bias(&y, b),
            None => Ok(y),
        }
    }

    fn add_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        if bias.rank() != 1 || x.dims().last() != bias.dims().first() {
            return Err(shape_err(
                "add_bias",
                format!("bias {:?} does not match {:?}", bias.dims(), x.dims()),
            ));
        }
        if self.fused() {
            return crate::cpu::add_rows(x, bias).c();
        }
        x.broadcast_add(bias).c()
    }

    fn sum_to_last(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused() {
            return crate::cpu::sum_rows(x).c();
        }
        let c = x.dims().last().copied().unwrap_or(1);
        x.reshape(((), c)).c()?.sum(0).c()
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if self.fused() {
            return crate::cpu::add(a, b).c();
        }
        a.add(b).c()
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if self.fused() {
            return crate::cpu::mul(a, b).c();
        }
        a.mul(b).c()
    }

    fn scale(&self, a: &Tensor, s: f32) -> Result<Tensor> {
        if self.fused() {
            return crate::cpu::scale(a, s).c();
        }
        a.affine(f64::from(s), 0.0).c()
    }

    fn scale_features(&self, x: &Tensor, s: &Tensor) -> Result<Tensor> {
        if s.rank() != 1 || x.dims().last() != s.dims().first() {
            return Err(shape_err(
                "scale_features",
                format!("scale {:?} does not match {:?}", s.dims(), x.dims()),
            ));
        }
        if self.fused() {
            return crate::cpu::scale_rows(x, s).c();
        }
        x.broadcast_mul(s).c()
    }

    fn scale_by(&self, a: &Tensor, s: &Tensor) -> Result<Tensor> {
        if s.elem_count() != 1 {
            return Err(shape_err(
                "scale_by",
                format!("the scale must have one element, got {:?}", s.dims()),
            ));
        }
        if self.fused() {
            let s = crate::cpu::with_slices([s], |[v]| v[0]).c()?;
            return crate::cpu::scale(a, s).c();
        }
        a.broadcast_mul(&s.flatten_all().c()?).c()
    }

    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        if self.fused() {
            return crate::cpu::activation(x, act).c();
        }
        match act {
            Activation::Gelu => x.gelu_erf().c(),
            Activation::GeluTanh => x.gelu().c(),
            Activation::Silu => x.silu().c(),
            Activation::Relu => x.relu().c(),
        }
    }

    fn activation_backward(&self, x: &Tensor, dy: &Tensor, act: Activation) -> Result<Tensor> {
        if x.dims() != dy.dims() {
            return Err(shape_err(
                "activation_backward",
                format!("x {:?} and dy {:?} differ", x.dims(), dy.dims()),
            ));
        }
        if self.fused() {
            return crate::cpu::activation_backward(x, dy, act).c();
        }
        let d = match act {
            // gelu'(x) = Phi(x) + x * phi(x)
            Activation::Gelu => {
                let cdf = x
                    .affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)
                    .c()?
                    .erf()
                    .c()?
                    .affine(0.5, 0.5)
                    .c()?;
                let pdf = x
                    .sqr()
                    .c()?
                    .affine(-0.5, 0.0)
                    .c()?
                    .exp()
                    .c()?
                    .affine(1.0 / (2.0 * std::f64::consts::PI).sqrt(), 0.0)
                    .c()?;
                cdf.add(&x.mul(&pdf).c()?).c()?
            }
            // 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2), t = tanh(k (x + c x^3))
            Activation::GeluTanh => {
                let (k, c) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044_715);
                let x2 = x.sqr().c()?;
                let inner = x.mul(&x2.affine(c, 1.0).c()?).c()?.affine(k, 0.0).c()?;
                let t = inner.tanh().c()?;
                let du = x2.affine(3.0 * c * k, k).c()?;
                let sech2 = t.sqr().c()?.affine(-1.0, 1.0).c()?;
                let right = x.mul(&sech2).c()?.mul(&du).c()?.affine(0.5, 0.0).c()?;
                t.affine(0.5, 0.5).c()?.add(&right).c()?
            }
            // s (1 + x (1 - s)), s = sigmoid(x)
            Activation::Silu => {
                let s = x.neg().c()?.exp().c()?.affine(1.0, 1.0).c()?.recip().c()?;
                let one_minus = s.affine(-1.0, 1.0).c()?;
                s.mul(&x.mul(&one_minus).c()?.affine(1.0, 1.0).c()?).c()?
            }
            Activation::Relu => x.gt(0.0).c()?.to_dtype(x.dtype()).c()?,
        };
        dy.mul(&d).c()
    }

    fn tanh(&self, x: &Tensor) -> Result<Tensor> {
        x.tanh().c()
    }

    fn tanh_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        dy.mul(&y.sqr().c()?.affine(-1.0, 1.0).c()?).c()
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, LayerNormSaved<Tensor>)> {
        let c = x.dims().last().copied().unwrap_or(0);
        if gamma.dims() != [c] || beta.dims() != [c] {
            return Err(shape_err(
                "layer_norm",
                format!(
                    "gamma {:?} / beta {:?} do not match {:?}",
                    gamma.dims(),
                    beta.dims(),
                    x.dims()
                ),
            ));
        }
        if self.fused() {
            let (y, mean, rstd) = crate::cpu::layer_norm(x, gamma, beta, eps).c()?;
            return Ok((y, LayerNormSaved { mean, rstd }));
        }
        let mean = x.mean_keepdim(D::Minus1).c()?;
        let xc = x.broadcast_sub(&mean).c()?;
        let var = xc.sqr().c()?.mean_keepdim(D::Minus1).c()?;
        let rstd = var
            .affine(1.0, f64::from(eps))
            .c()?
            .sqrt()
            .c()?
            .recip()
            .c()?;
        let y = xc
            .broadcast_mul(&rstd)
            .c()?
            .broadcast_mul(gamma)
            .c()?
            .broadcast_add(beta)
            .c()?;
        Ok((y, LayerNormSaved { mean, rstd }))
    }

    fn layer_norm_backward(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        saved: &LayerNormSaved<Tensor>,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if x.dims() != dy.dims() {
            return Err(shape_err(
                "layer_norm_backward",
                format!("x {:?} and dy {:?} differ", x.dims(), dy.dims()),
            ));
        }
        if self.fused() {
            return crate::cpu::layer_norm_backward(x, gamma, &saved.mean, &saved.rstd, dy).c();
        }
        let xhat = x
            .broadcast_sub(&saved.mean)
            .c()?
            .broadcast_mul(&saved.rstd)
            .c()?;
        let dgamma = self.sum_to_last(&dy.mul(&xhat).c()?)?;
        let dbeta = self.sum_to_last(dy)?;
        let dxhat = dy.broadcast_mul(gamma).c()?;
        let m1 = dxhat.mean_keepdim(D::Minus1).c()?;
        let m2 = dxhat.mul(&xhat).c()?.mean_keepdim(D::Minus1).c()?;
        let dx = dxhat
            .broadcast_sub(&m1)
            .c()?
            .sub(&xhat.broadcast_mul(&m2).c()?)
            .c()?
            .broadcast_mul(&saved.rstd)
            .c()?;
        Ok((dx, dgamma, dbeta))
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        key_mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<(Tensor, Tensor)> {
        check_attention_shapes(q, k, v, causal)?;
        if self.fused() {
            let (b, t, _) = k.dims3().c()?;
            self.check_key_mask(key_mask, b, t)?;
            let probs = b * heads * q.dims3().c()?.1 * t;
            let save_probs = probs <= SAVED_PROBS_MAX;
            return crate::cpu::attention(q, k, v, heads, key_mask, causal, save_probs).c();
        }
        let (qh, kh, vh) = (
            split_heads(q, heads)?,
            split_heads(k, heads)?,
            split_heads(v, heads)?,
        );
        let s = self.scores(&qh, &kh, key_mask, causal)?;
        let max = s.max_keepdim(D::Minus1).c()?;
        let lse = s
            .broadcast_sub(&max)
            .c()?
            .exp()
            .c()?
            .sum_keepdim(D::Minus1)
            .c()?
            .log()
            .c()?
            .add(&max)
            .c()?;
        let p = s.broadcast_sub(&lse).c()?.exp().c()?;
        let out = merge_heads(&p.matmul(&vh).c()?)?;
        Ok((out, lse.squeeze(D::Minus1).c()?))
    }

    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        saved: &Tensor,
        d_out: &Tensor,
        heads: usize,
        key_mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        check_attention_shapes(q, k, v, causal)?;
        if self.fused() {
            let (b, t, _) = k.dims3().c()?;
            self.check_key_mask(key_mask, b, t)?;
            return crate::cpu::attention_backward(
                q, k, v, out, saved, d_out, heads, key_mask, causal,
            )
            .c();
        }
        let (qh, kh, vh) = (
            split_heads(q, heads)?,
            split_heads(k, heads)?,
            split_heads(v, heads)?,
        );
        let (oh, doh) = (split_heads(out, heads)?, split_heads(d_out, heads)?);
        let d = qh.dims()[3];
        let scale = 1.0 / (d as f64).sqrt();
        // The fused kernel's forward may have saved the probabilities themselves.
        let p = if saved.rank() == 4 {
            saved.clone()
        } else {
            self.scores(&qh, &kh, key_mask, causal)?
                .broadcast_sub(&saved.unsqueeze(D::Minus1).c()?)
                .c()?
                .exp()
                .c()?
        };
        let dv = p.t().c()?.matmul(&doh).c()?;
        let dp = doh.matmul(&vh.t().c()?).c()?;
        let row = doh.mul(&oh).c()?.sum_keepdim(D::Minus1).c()?;
        let ds = p
            .mul(&dp.broadcast_sub(&row).c()?)
            .c()?
            .affine(scale, 0.0)
            .c()?;
        let dq = ds.matmul(&kh).c()?;
        let dk = ds.t().c()?.matmul(&qh).c()?;
        Ok((merge_heads(&dq)?, merge_heads(&dk)?, merge_heads(&dv)?))
    }

    fn embedding(&self, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (vocab, c) = table.dims2().c()?;
        let flat = ids.flatten_all().c()?;
        let max = flat.max(0).c()?.to_scalar::<u32>().c()?;
        if flat.elem_count() > 0 && max as usize >= vocab {
            return Err(shape_err(
                "embedding",
                format!("token id {max} is outside the vocabulary of {vocab}"),
            ));
        }
        let mut dims = ids.dims().to_vec();
        dims.push(c);
        table.index_select(&flat, 0).c()?.reshape(dims).c()
    }

    fn embedding_backward(&self, ids: &Tensor, dy: &Tensor, vocab: usize) -> Result<Tensor> {
        let c = dy.dims().last().copied().unwrap_or(0);
        let flat = ids.flatten_all().c()?;
        let rows = dy.reshape(((), c)).c()?;
        Tensor::zeros((vocab, c), DType::F32, &self.device)
            .c()?
            .index_add(&flat, &rows, 0)
            .c()
    }

    fn concat_seq(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Tensor::cat(&[a, b], 1).c()
    }

    fn slice_seq(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        x.narrow(1, start, len).c()?.contiguous().c()
    }

    fn cross_entropy_sum(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        self.check_logits(logits, labels)?;
        let (safe, valid) = self.labels_mask(labels)?;
        let max = logits.max_keepdim(1).c()?;
        let lse = logits
            .broadcast_sub(&max)
            .c()?
            .exp()
            .c()?
            .sum_keepdim(1)
            .c()?
            .log()
            .c()?
            .add(&max)
            .c()?;
        let picked = logits.gather(&safe.unsqueeze(1).c()?, 1).c()?;
        let nll = lse.sub(&picked).c()?.squeeze(1).c()?;
        nll.mul(&valid).c()?.sum_all().c()?.reshape(1).c()
    }

    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        scale: f32,
    ) -> Result<Tensor> {
        let (_, k) = self.check_logits(logits, labels)?;
        let (safe, valid) = self.labels_mask(labels)?;
        let probs =
            candle_core::Tensor::exp(&logits.broadcast_sub(&logits.max_keepdim(1).c()?).c()?)
                .c()?;
        let probs = probs.broadcast_div(&probs.sum_keepdim(1).c()?).c()?;
        let classes = Tensor::arange(0u32, k as u32, &self.device).c()?;
        let onehot = safe
            .unsqueeze(1)
            .c()?
            .broadcast_eq(&classes.unsqueeze(0).c()?)
            .c()?
            .to_dtype(DType::F32)
            .c()?;
        probs
            .sub(&onehot)
            .c()?
            .broadcast_mul(&valid.unsqueeze(1).c()?)
            .c()?
            .affine(f64::from(scale), 0.0)
            .c()
    }

    fn sum_squares(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused() {
            return crate::cpu::sum_squares(x).c();
        }
        x.sqr().c()?.sum_all().c()?.reshape(1).c()
    }

    fn adamw(
        &self,
        param: &Tensor,
        grad: &Tensor,
        m: &Tensor,
        v: &Tensor,
        grad_scale: f32,
        hp: AdamW,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if self.fused() {
            return crate::cpu::adamw(param, grad, m, v, grad_scale, &hp).c();
        }
        // torch.optim.AdamW (single tensor, foreach=False): decay first, then the Adam step
        // with denom = sqrt(v) / sqrt(bc2) + eps and step size lr / bc1.
        let g = grad.affine(f64::from(grad_scale), 0.0).c()?;
        let (b1, b2) = (hp.beta1, hp.beta2);
        let p = param.affine(1.0 - hp.lr * hp.weight_decay, 0.0).c()?;
        let m = m
            .affine(b1, 0.0)
            .c()?
            .add(&g.affine(1.0 - b1, 0.0).c()?)
            .c()?;
        let v = v
            .affine(b2, 0.0)
            .c()?
            .add(&g.sqr().c()?.affine(1.0 - b2, 0.0).c()?)
            .c()?;
        let bc1 = 1.0 - b1.powi(hp.step as i32);
        let bc2 = 1.0 - b2.powi(hp.step as i32);
        let denom = v.sqrt().c()?.affine(1.0 / bc2.sqrt(), hp.eps).c()?;
        let p = p
            .sub(&m.div(&denom).c()?.affine(hp.lr / bc1, 0.0).c()?)
            .c()?;
        Ok((p, m, v))
    }
}
