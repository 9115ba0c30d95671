//! The gradient tape: one reverse-mode autodiff over [`Backend`] ops, shared by every device.
//!
//! A [`Tape`] lives for one forward + backward pass. Inputs and parameters enter as leaves;
//! every op whose inputs need a gradient is recorded with what its backward needs. Ops on
//! values that need no gradient (a frozen embedding lookup, say) are computed but not
//! recorded, so **frozen weights never get a weight gradient** and no backward work is spent
//! on them. [`Tape::backward`] walks the records in reverse and frees each node's value and
//! saved tensors as soon as it has been processed, so activations are released as early as
//! the pass allows.
//!
//! ```
//! # use tunelab_core::{tape::Tape, Shape};
//! # fn demo<B: tunelab_core::Backend>(b: B) -> tunelab_core::backend::Result<()> {
//! let mut tape = Tape::new(b.clone());
//! let w = tape.leaf(b.upload(&[1.0, 2.0, 3.0, 4.0], &Shape::new([2, 2]))?, true); // (out, in)
//! let x = tape.leaf(b.upload(&[1.0, -1.0], &Shape::new([1, 2]))?, false);        // (N, in)
//! let y = tape.matmul(x, w, false, true)?;                                          // (N, out)
//! let loss = tape.sum_squares(y)?;
//! tape.backward(loss)?;
//! let dw = tape.grad(w).expect("w is trainable");
//! # let _ = dw; Ok(()) }
//! ```

use crate::Shape;
use crate::backend::{Backend, BackendError, LayerNormSaved, Result};

/// `t (.., C)` seen as `(rows, C)`: a batched input or gradient with its leading dims folded
/// into rows, for the weight gradient of a shared 2-D weight.
fn rows_view<B: Backend>(b: &B, t: &B::Tensor) -> Result<B::Tensor> {
    let s = b.shape(t);
    let c = s.dims().last().copied().unwrap_or(1);
    b.reshape(t, &Shape::new([s.numel() / c.max(1), c]))
}

/// A value on the tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Var(usize);

#[derive(Debug)]
enum Op<T> {
    Leaf,
    Matmul {
        a: Var,
        b: Var,
        ta: bool,
        tb: bool,
    },
    Linear {
        x: Var,
        w: Var,
        bias: Option<Var>,
    },
    LoraLinear {
        x: Var,
        w: Var,
        bias: Option<Var>,
        a: Var,
        b: Var,
        scale: f32,
        /// `w + scale · b a`, the weight the forward pass multiplied by.
        merged: T,
    },
    AddBias {
        x: Var,
        bias: Var,
    },
    Add {
        a: Var,
        b: Var,
    },
    Mul {
        a: Var,
        b: Var,
    },
    Scale {
        a: Var,
        s: f32,
    },
    ScaleFeatures {
        x: Var,
        s: Var,
    },
    Gelu {
        x: Var,
    },
    Tanh {
        x: Var,
    },
    LayerNorm {
        x: Var,
        gamma: Var,
        beta: Var,
        saved: LayerNormSaved<T>,
    },
    Attention {
        q: Var,
        k: Var,
        v: Var,
        heads: usize,
        mask: Option<T>,
        causal: bool,
        /// What the backend's forward saved for the backward (log-sum-exp or probabilities).
        saved: T,
    },
    Embedding {
        table: Var,
        ids: T,
        vocab: usize,
    },
    ConcatSeq {
        a: Var,
        b: Var,
        len_a: usize,
    },
    SliceSeq {
        x: Var,
        start: usize,
        len: usize,
        total: usize,
    },
    Reshape {
        x: Var,
    },
    CrossEntropy {
        logits: Var,
        labels: T,
        scale: f32,
    },
    SumSquares {
        x: Var,
    },
}

#[derive(Debug)]
struct Node<T> {
    value: Option<T>,
    grad: Option<T>,
    needs_grad: bool,
    /// Leaves keep their gradient after backward; intermediate gradients are freed.
    keep_grad: bool,
    op: Op<T>,
}

/// One forward + backward pass over backend `B`.
#[derive(Debug)]
pub struct Tape<B: Backend> {
    backend: B,
    nodes: Vec<Node<B::Tensor>>,
}

fn freed(op: &'static str) -> BackendError {
    BackendError::Shape {
        op,
        msg: "value was already freed by the backward pass".into(),
    }
}

impl<B: Backend> Tape<B> {
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            nodes: Vec::new(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Number of recorded nodes (leaves included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A leaf: an input (`trainable = false`) or a parameter.
    pub fn leaf(&mut self, value: B::Tensor, trainable: bool) -> Var {
        self.nodes.push(Node {
            value: Some(value),
            grad: None,
            needs_grad: trainable,
            keep_grad: true,
            op: Op::Leaf,
        });
        Var(self.nodes.len() - 1)
    }

    /// The forward value of `v`.
    pub fn value(&self, v: Var) -> Result<&B::Tensor> {
        self.nodes[v.0].value.as_ref().ok_or_else(|| freed("value"))
    }

    pub fn shape(&self, v: Var) -> Result<Shape> {
        Ok(self.backend.shape(self.value(v)?))
    }

    /// Whether `v` depends on a trainable leaf.
    pub fn needs_grad(&self, v: Var) -> bool {
        self.nodes[v.0].needs_grad
    }

    /// The gradient of a leaf after [`Tape::backward`] (None if it is frozen or unused).
    pub fn grad(&self, v: Var) -> Option<&B::Tensor> {
        self.nodes[v.0].grad.as_ref()
    }

    /// Takes a leaf's gradient out of the tape.
    pub fn take_grad(&mut self, v: Var) -> Option<B::Tensor> {
        self.nodes[v.0].grad.take()
    }

    fn push(&mut self, value: B::Tensor, inputs: &[Var], op: Op<B::Tensor>) -> Var {
        let needs_grad = inputs.iter().any(|v| self.nodes[v.0].needs_grad);
        let op = if needs_grad { op } else { Op::Leaf };
        self.nodes.push(Node {
            value: Some(value),
            grad: None,
            needs_grad,
            keep_grad: false,
            op,
        });
        Var(self.nodes.len() - 1)
    }

    // ---- ops (forward) -------------------------------------------------------------------

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

    pub fn gelu(&mut self, x: Var) -> Result<Var> {
        let y = self.backend.gelu(self.value(x)?)?;
        Ok(self.push(y, &[x], Op::Gelu { x }))
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

    // ---- backward ------------------------------------------------------------------------

    fn accumulate(&mut self, v: Var, g: B::Tensor) -> Result<()> {
        let node = &mut self.nodes[v.0];
        if !node.needs_grad {
            return Ok(());
        }
        node.grad = Some(match node.grad.take() {
            None => g,
            Some(prev) => self.backend.add(&prev, &g)?,
        });
        Ok(())
    }

    /// Adds `op(p) @ op(q)` to `v`'s gradient: one product onto the gradient so far
    /// ([`Backend::matmul_add`]) where there is one, instead of a product and then a sum.
    fn accumulate_product(
        &mut self,
        v: Var,
        p: &B::Tensor,
        q: &B::Tensor,
        tp: bool,
        tq: bool,
    ) -> Result<()> {
        if !self.wants(v) {
            return Ok(());
        }
        let sum = match self.nodes[v.0].grad.take() {
            Some(prev) => self.backend.matmul_add(&prev, p, q, tp, tq)?,
            None => self.backend.matmul(p, q, tp, tq)?,
        };
        self.nodes[v.0].grad = Some(sum);
        Ok(())
    }

    fn wants(&self, v: Var) -> bool {
        self.nodes[v.0].needs_grad
    }

    /// Back-propagates from the scalar `loss` (seeded with 1). Afterwards trainable leaves hold
    /// their gradients; every intermediate value, gradient and saved tensor has been freed.
    pub fn backward(&mut self, loss: Var) -> Result<()> {
        let shape = self.shape(loss)?;
        if shape.numel() != 1 {
            return Err(BackendError::Shape {
                op: "backward",
                msg: format!("the loss must be a scalar, got shape {shape}"),
            });
        }
        if !self.nodes[loss.0].needs_grad {
            return Err(BackendError::Shape {
                op: "backward",
                msg: "the loss does not depend on any trainable parameter".into(),
            });
        }
        let seed = self.backend.upload(&[1.0], &shape)?;
        self.nodes[loss.0].grad = Some(seed);
        for i in (0..=loss.0).rev() {
            let op = std::mem::replace(&mut self.nodes[i].op, Op::Leaf);
            let keep_grad = self.nodes[i].keep_grad;
            let g = if keep_grad {
                self.nodes[i].grad.clone()
            } else {
                self.nodes[i].grad.take()
            };
            if let Some(g) = g {
                self.backward_op(i, op, &g, i == loss.0)?;
            }
            if !keep_grad {
                self.nodes[i].value = None;
            }
        }
        // Values of later nodes (after the loss) are unused.
        for node in &mut self.nodes[loss.0 + 1..] {
            node.value = None;
            node.op = Op::Leaf;
        }
        Ok(())
    }

    /// Propagates `g`, the gradient of node `i`, to the inputs of `op`. At the root (`is_root`)
    /// `g` is the seed 1, so scalar-output ops skip multiplying by it.
    fn backward_op(
        &mut self,
        i: usize,
        op: Op<B::Tensor>,
        g: &B::Tensor,
        is_root: bool,
    ) -> Result<()> {
        let b = self.backend.clone();
        match op {
            Op::Leaf => {}
            Op::Linear { x, w, bias } => {
                if let Some(bias) = bias.filter(|&v| self.wants(v)) {
                    let db = b.sum_to_last(g)?;
                    self.accumulate(bias, db)?;
                }
                self.backward_op(
                    i,
                    Op::Matmul {
                        a: x,
                        b: w,
                        ta: false,
                        tb: true,
                    },
                    g,
                    is_root,
                )?;
            }
            Op::LoraLinear {
                x,
                w,
                bias,
                a,
                b: lb,
                scale,
                merged,
            } => {
                if let Some(bias) = bias.filter(|&v| self.wants(v)) {
                    let db = b.sum_to_last(g)?;
                    self.accumulate(bias, db)?;
                }
                self.accumulate_product(x, g, &merged, false, false)?;
                if self.wants(w) || self.wants(a) || self.wants(lb) {
                    let (x2, g2) = (rows_view(&b, self.value(x)?)?, rows_view(&b, g)?);
                    if self.wants(w) {
                        let dw = b.matmul(&g2, &x2, true, false)?;
                        self.accumulate(w, dw)?;
                    }
                    if self.wants(lb) {
                        // d b = scale · gᵀ (x aᵀ)
                        let down = b.matmul(&x2, self.value(a)?, false, true)?;
                        let db = b.matmul(&g2, &down, true, false)?;
                        let db = b.scale(&db, scale)?;
                        self.accumulate(lb, db)?;
                    }
                    if self.wants(a) {
                        // d a = scale · (g b)ᵀ x
                        let gb = b.matmul(&g2, self.value(lb)?, false, false)?;
                        let da = b.matmul(&gb, &x2, true, false)?;
                        let da = b.scale(&da, scale)?;
                        self.accumulate(a, da)?;
                    }
                }
            }
            Op::Matmul { a, b: w, ta, tb } => {
                let av = self.value(a)?.clone();
                let wv = self.value(w)?.clone();
                if ta {
                    self.accumulate_product(a, &wv, g, tb, true)?;
                } else {
                    self.accumulate_product(a, g, &wv, false, !tb)?;
                }
                if self.wants(w) {
                    let (ra, rw) = (b.shape(&av).rank(), b.shape(&wv).rank());
                    // A shared 2-D weight with a batched input: fold the batch into the rows so
                    // the weight gradient sums over it.
                    let (av, g) = if rw == 2 && ra > 2 {
                        (rows_view(&b, &av)?, rows_view(&b, g)?)
                    } else {
                        (av, g.clone())
                    };
                    let dw = if tb {
                        b.matmul(&g, &av, true, ta)?
                    } else {
                        b.matmul(&av, &g, !ta, false)?
                    };
                    self.accumulate(w, dw)?;
                }
            }
            Op::AddBias { x, bias } => {
                if self.wants(bias) {
                    let db = b.sum_to_last(g)?;
                    self.accumulate(bias, db)?;
                }
                self.accumulate(x, g.clone())?;
            }
            Op::Add { a, b: c } => {
                self.accumulate(a, g.clone())?;
                self.accumulate(c, g.clone())?;
            }
            Op::Mul { a, b: c } => {
                if self.wants(a) {
                    let da = b.mul(g, self.value(c)?)?;
                    self.accumulate(a, da)?;
                }
                if self.wants(c) {
                    let dc = b.mul(g, self.value(a)?)?;
                    self.accumulate(c, dc)?;
                }
            }
            Op::Scale { a, s } => {
                let da = b.scale(g, s)?;
                self.accumulate(a, da)?;
            }
            Op::ScaleFeatures { x, s } => {
                if self.wants(s) {
                    let ds = b.sum_to_last(&b.mul(g, self.value(x)?)?)?;
                    self.accumulate(s, ds)?;
                }
                if self.wants(x) {
                    let dx = b.scale_features(g, self.value(s)?)?;
                    self.accumulate(x, dx)?;
                }
            }
            Op::Gelu { x } => {
                let dx = b.gelu_backward(self.value(x)?, g)?;
                self.accumulate(x, dx)?;
            }
            Op::Tanh { x } => {
                let y = self.nodes[i].value.as_ref().ok_or_else(|| freed("tanh"))?;
                let dx = b.tanh_backward(y, g)?;
                self.accumulate(x, dx)?;
            }
            Op::LayerNorm {
                x,
                gamma,
                beta,
                saved,
            } => {
                let (dx, dgamma, dbeta) =
                    b.layer_norm_backward(self.value(x)?, self.value(gamma)?, &saved, g)?;
                self.accumulate(x, dx)?;
                self.accumulate(gamma, dgamma)?;
                self.accumulate(beta, dbeta)?;
            }
            Op::Attention {
                q,
                k,
                v,
                heads,
                mask,
                causal,
                saved,
            } => {
                let out = self.nodes[i]
                    .value
                    .as_ref()
                    .ok_or_else(|| freed("attention"))?;
                let (dq, dk, dv) = b.attention_backward(
                    self.value(q)?,
                    self.value(k)?,
                    self.value(v)?,
                    out,
                    &saved,
                    g,
                    heads,
                    mask.as_ref(),
                    causal,
                )?;
                self.accumulate(q, dq)?;
                self.accumulate(k, dk)?;
                self.accumulate(v, dv)?;
            }
            Op::Embedding { table, ids, vocab } => {
                let dt = b.embedding_backward(&ids, g, vocab)?;
                self.accumulate(table, dt)?;
            }
            Op::ConcatSeq { a, b: c, len_a } => {
                let total = b.shape(g).dims()[1];
                if self.wants(a) {
                    let da = b.slice_seq(g, 0, len_a)?;
                    self.accumulate(a, da)?;
                }
                if self.wants(c) {
                    let dc = b.slice_seq(g, len_a, total - len_a)?;
                    self.accumulate(c, dc)?;
                }
            }
            Op::SliceSeq {
                x,
                start,
                len,
                total,
            } => {
                let sg = b.shape(g);
                let (bsz, c) = (sg.dims()[0], sg.dims()[2]);
                let mut dx = g.clone();
                if start > 0 {
                    dx = b.concat_seq(&b.zeros(&Shape::new([bsz, start, c]))?, &dx)?;
                }
                if start + len < total {
                    dx =
                        b.concat_seq(&dx, &b.zeros(&Shape::new([bsz, total - start - len, c]))?)?;
                }
                self.accumulate(x, dx)?;
            }
            Op::Reshape { x } => {
                let shape = self.shape(x)?;
                let dx = b.reshape(g, &shape)?;
                self.accumulate(x, dx)?;
            }
            Op::CrossEntropy {
                logits,
                labels,
                scale,
            } => {
                let mut dl = b.cross_entropy_backward(self.value(logits)?, &labels, scale)?;
                if !is_root {
                    dl = b.scale_by(&dl, g)?;
                }
                self.accumulate(logits, dl)?;
            }
            Op::SumSquares { x } => {
                let mut dx = b.scale(self.value(x)?, 2.0)?;
                if !is_root {
                    dx = b.scale_by(&dx, g)?;
                }
                self.accumulate(x, dx)?;
            }
        }
        Ok(())
    }
}
