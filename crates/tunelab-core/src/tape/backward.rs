//! One backward arm per op: the gradients of its inputs from the gradient of its output.

use super::{Op, Tape, freed, rows_view};
use crate::Shape;
use crate::backend::{Backend, Result};

impl<B: Backend> Tape<B> {
    /// Propagates `g`, the gradient of node `i`, to the inputs of `op`. At the root (`is_root`)
    /// `g` is the seed 1, so scalar-output ops skip multiplying by it.
    pub(super) fn backward_op(
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
            Op::Activation { x, act } => {
                let dx = b.activation_backward(self.value(x)?, g, act)?;
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
