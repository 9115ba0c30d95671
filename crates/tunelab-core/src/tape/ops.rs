//! The ops a forward pass records: each computes its value and, where an input needs a
//! gradient, records what its backward needs.

use super::{Op, Tape, Var};
use crate::Shape;
use crate::backend::{Backend, BackendError, Result};

impl<B: Backend> Tape<B> {
    /// `op(a) @ op(b)`; see [`Backend::matmul`]. A shared 2-D `b` with a batched `a` must have
    /// `ta = false` (the linear-layer case).
    pub fn matmul(&mut self, a: Var, b: Var, ta: bool, tb: bool) -> Result<Var> {
        let (ra, rb) = (self.shape(a)?.rank(), self.shape(b)?.rank());
        if ta && rb == 2 && ra > 2 {
            return Err(BackendError::Shape {
                op: "matmul",
                msg: "a transposed batched `a` with a shared `b` is not supported".into(),
            });
        }
        let y = self
            .backend
            .matmul(self.value(a)?, self.value(b)?, ta, tb)?;
        Ok(self.push(y, &[a, b], Op::Matmul { a, b, ta, tb }))
    }

    /// `x @ w^T + bias` with `w` as `(out, in)`, PyTorch's `nn.Linear`.
    pub fn linear(&mut self, x: Var, w: Var, bias: Option<Var>) -> Result<Var> {
        let (rx, rw) = (self.shape(x)?.rank(), self.shape(w)?.rank());
        if rx < 2 || rw != 2 {
            return Err(BackendError::Shape {
                op: "linear",
                msg: format!(
                    "expected x (.., K) with rank ≥ 2 and w (N, K), got ranks {rx} and {rw}"
                ),
            });
        }
        let bv = match bias {
            Some(b) => Some(self.value(b)?),
            None => None,
        };
        let y = self.backend.linear(self.value(x)?, self.value(w)?, bv)?;
        let inputs: &[Var] = match bias {
            Some(b) => &[x, w, b],
            None => &[x, w],
        };
        Ok(self.push(y, inputs, Op::Linear { x, w, bias }))
    }

    /// A linear layer with a LoRA update: `x (w + scale · b a)^T + bias` with `w (out, in)`,
    /// `a (r, in)` and `b (out, r)`. Equal to PEFT's `x w^T + bias + scale · (x a^T) b^T` up to
    /// rounding, computed as one product with the merged weight (`out × in × r`
    /// multiply-adds to build) instead of the base product plus four ops over the output
    /// (the update's two products, its scale and the sum), and the backward passes one
    /// product `g (w + scale · b a)` for the input's gradient. The update's input must be
    /// the layer's input: LoRA dropout in training needs the separate branch.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_linear(
        &mut self,
        x: Var,
        w: Var,
        bias: Option<Var>,
        a: Var,
        b: Var,
        scale: f32,
    ) -> Result<Var> {
        let ba = self
            .backend
            .matmul(self.value(b)?, self.value(a)?, false, false)?;
        let update = self.backend.scale(&ba, scale)?;
        let merged = self.backend.add(self.value(w)?, &update)?;
        let bv = match bias {
            Some(v) => Some(self.value(v)?),
            None => None,
        };
        let y = self.backend.linear(self.value(x)?, &merged, bv)?;
        let mut inputs = vec![x, w, a, b];
        inputs.extend(bias);
        Ok(self.push(
            y,
            &inputs,
            Op::LoraLinear {
                x,
                w,
                bias,
                a,
                b,
                scale,
                merged,
            },
        ))
    }

    pub fn add_bias(&mut self, x: Var, bias: Var) -> Result<Var> {
        let y = self.backend.add_bias(self.value(x)?, self.value(bias)?)?;
        Ok(self.push(y, &[x, bias], Op::AddBias { x, bias }))
    }

    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let y = self.backend.add(self.value(a)?, self.value(b)?)?;
        Ok(self.push(y, &[a, b], Op::Add { a, b }))
    }

    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        let y = self.backend.mul(self.value(a)?, self.value(b)?)?;
        Ok(self.push(y, &[a, b], Op::Mul { a, b }))
    }

    pub fn scale(&mut self, a: Var, s: f32) -> Result<Var> {
        let y = self.backend.scale(self.value(a)?, s)?;
        Ok(self.push(y, &[a], Op::Scale { a, s }))
    }

    /// `x (.., C) * s (C,)`: each feature scaled by its own factor.
    pub fn scale_features(&mut self, x: Var, s: Var) -> Result<Var> {
        let y = self
            .backend
            .scale_features(self.value(x)?, self.value(s)?)?;
        Ok(self.push(y, &[x, s], Op::ScaleFeatures { x, s }))
    }

    pub fn activation(&mut self, x: Var, act: crate::backend::Activation) -> Result<Var> {
        let y = self.backend.activation(self.value(x)?, act)?;
        Ok(self.push(y, &[x], Op::Activation { x, act }))
    }

    /// GELU, the exact erf form.
    pub fn gelu(&mut self, x: Var) -> Result<Var> {
        self.activation(x, crate::backend::Activation::Gelu)
    }

    pub fn tanh(&mut self, x: Var) -> Result<Var> {
        let y = self.backend.tanh(self.value(x)?)?;
        Ok(self.push(y, &[x], Op::Tanh { x }))
    }

    pub fn layer_norm(&mut self, x: Var, gamma: Var, beta: Var, eps: f32) -> Result<Var> {
        let (y, saved) =
            self.backend
                .layer_norm(self.value(x)?, self.value(gamma)?, self.value(beta)?, eps)?;
        Ok(self.push(
            y,
            &[x, gamma, beta],
            Op::LayerNorm {
                x,
                gamma,
                beta,
                saved,
            },
        ))
    }

    /// Multi-head attention; `mask` is `(B, T)` with 1 for tokens and 0 for padding.
    pub fn attention(
        &mut self,
        q: Var,
        k: Var,
        v: Var,
        heads: usize,
        mask: Option<&B::Tensor>,
        causal: bool,
    ) -> Result<Var> {
        let (y, saved) = self.backend.attention(
            self.value(q)?,
            self.value(k)?,
            self.value(v)?,
            heads,
            mask,
            causal,
        )?;
        Ok(self.push(
            y,
            &[q, k, v],
            Op::Attention {
                q,
                k,
                v,
                heads,
                mask: mask.cloned(),
                causal,
                saved,
            },
        ))
    }

    /// Rows of `table (V, C)` for `ids` (a u32 tensor).
    pub fn embedding(&mut self, table: Var, ids: &B::Tensor) -> Result<Var> {
        let vocab = self.shape(table)?.dims().first().copied().unwrap_or(0);
        let y = self.backend.embedding(self.value(table)?, ids)?;
        Ok(self.push(
            y,
            &[table],
            Op::Embedding {
                table,
                ids: ids.clone(),
                vocab,
            },
        ))
    }

    pub fn concat_seq(&mut self, a: Var, b: Var) -> Result<Var> {
        let len_a = self.shape(a)?.dims().get(1).copied().unwrap_or(0);
        let y = self.backend.concat_seq(self.value(a)?, self.value(b)?)?;
        Ok(self.push(y, &[a, b], Op::ConcatSeq { a, b, len_a }))
    }

    pub fn slice_seq(&mut self, x: Var, start: usize, len: usize) -> Result<Var> {
        let total = self.shape(x)?.dims().get(1).copied().unwrap_or(0);
        let y = self.backend.slice_seq(self.value(x)?, start, len)?;
        Ok(self.push(
            y,
            &[x],
            Op::SliceSeq {
                x,
                start,
                len,
                total,
            },
        ))
    }

    pub fn reshape(&mut self, x: Var, shape: &Shape) -> Result<Var> {
        let y = self.backend.reshape(self.value(x)?, shape)?;
        Ok(self.push(y, &[x], Op::Reshape { x }))
    }

    /// `scale * sum_i CE(logits_i, labels_i)` over rows whose label is not ignored: a `(1,)`
    /// loss. With `scale = 1 / n_loss_tokens` it is the mean; gradient accumulation passes the
    /// total over all micro-batches instead.
    pub fn cross_entropy(&mut self, logits: Var, labels: &B::Tensor, scale: f32) -> Result<Var> {
        let sum = self
            .backend
            .cross_entropy_sum(self.value(logits)?, labels)?;
        let y = self.backend.scale(&sum, scale)?;
        Ok(self.push(
            y,
            &[logits],
            Op::CrossEntropy {
                logits,
                labels: labels.clone(),
                scale,
            },
        ))
    }

    /// `sum(x^2)`, a `(1,)` tensor.
    pub fn sum_squares(&mut self, x: Var) -> Result<Var> {
        let y = self.backend.sum_squares(self.value(x)?)?;
        Ok(self.push(y, &[x], Op::SumSquares { x }))
    }
}
