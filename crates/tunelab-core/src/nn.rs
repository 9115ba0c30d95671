//! Shared layers. Model files build only from these, so PEFT methods that wrap a layer by
//! name (LoRA, IA3) apply to every model without copying model code.

use crate::backend::{Backend, Result};
use crate::params::{Bound, ParamId};
use crate::tape::{Tape, Var};
use std::collections::HashMap;

/// A low-rank update attached to a linear layer: `y += scale * (x @ A^T) @ B^T`, with `A` as
/// `(r, in)` and `B` as `(out, r)` (PEFT's orientation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraModule {
    pub a: ParamId,
    pub b: ParamId,
    pub scale: f32,
}

/// What PEFT methods attach to named layers.
#[derive(Debug, Clone, Default)]
pub struct Adapters {
    /// Module name (`encoder.layer.0.attention.self.query`) to its LoRA update.
    pub lora: HashMap<String, LoraModule>,
}

/// One forward pass: the tape, the bound parameters and the adapters.
#[derive(Debug)]
pub struct Ctx<'a, B: Backend> {
    pub tape: &'a mut Tape<B>,
    pub bound: &'a Bound,
    pub adapters: &'a Adapters,
}

impl<B: Backend> Ctx<'_, B> {
    pub fn p(&self, id: ParamId) -> Var {
        self.bound.var(id)
    }
}

/// `nn.Linear`: weight `(out, in)`, optional bias `(out,)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// Module name, the weight's name without `.weight`.
    pub name: String,
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

impl Linear {
    pub fn forward<B: Backend>(&self, cx: &mut Ctx<'_, B>, x: Var) -> Result<Var> {
        let (w, b) = (cx.p(self.weight), self.bias.map(|b| cx.p(b)));
        let y = cx.tape.linear(x, w, b)?;
        match cx.adapters.lora.get(&self.name) {
            None => Ok(y),
            Some(l) => {
                let (a, bm) = (cx.p(l.a), cx.p(l.b));
                let down = cx.tape.matmul(x, a, false, true)?; // (.., r)
                let up = cx.tape.matmul(down, bm, false, true)?; // (.., out)
                let up = cx.tape.scale(up, l.scale)?;
                cx.tape.add(y, up)
            }
        }
    }
}

/// `nn.LayerNorm` over the last dim.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    pub weight: ParamId,
    pub bias: ParamId,
    pub eps: f32,
}

impl LayerNorm {
    pub fn forward<B: Backend>(&self, cx: &mut Ctx<'_, B>, x: Var) -> Result<Var> {
        let (g, b) = (cx.p(self.weight), cx.p(self.bias));
        cx.tape.layer_norm(x, g, b, self.eps)
    }
}
