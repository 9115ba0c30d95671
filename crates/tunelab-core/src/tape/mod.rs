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
mod backward;
mod ops;

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
    Activation {
        x: Var,
        act: crate::backend::Activation,
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
}

// The backward pass.
impl<B: Backend> Tape<B> {
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
}
