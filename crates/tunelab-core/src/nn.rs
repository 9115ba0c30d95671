//! Shared layers. Model files build only from these, so PEFT methods that wrap a layer by
//! name (LoRA, IA3) apply to every model without copying model code.

use crate::backend::{Backend, Result};
use crate::params::{Bound, ParamId};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use std::collections::HashMap;

/// A low-rank update attached to a linear layer: `y += scale * (x @ A^T) @ B^T`, with `A` as
/// `(r, in)` and `B` as `(out, r)` (PEFT's orientation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraModule {
    pub a: ParamId,
    pub b: ParamId,
    pub scale: f32,
    /// Dropout on the update's input while training (PEFT's `lora_dropout`).
    pub dropout: f32,
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
    /// Training: the random stream for dropout. `None` (evaluation, prediction) disables it.
    pub dropout: Option<&'a mut Rng>,
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
        let Some(l) = cx.adapters.lora.get(&self.name) else {
            return cx.tape.linear(x, w, b);
        };
        let (a, bm, p, scale) = (cx.p(l.a), cx.p(l.b), l.dropout, l.scale);
        match cx.dropout.as_deref_mut() {
            // Training with LoRA dropout: the update reads a dropped-out copy of the input.
            Some(rng) if p > 0.0 => {
                let shape = cx.tape.shape(x)?;
                let mask = dropout_mask(rng, shape.numel(), p);
                let mask = cx.tape.backend().upload(&mask, &shape)?;
                let mask = cx.tape.leaf(mask, false);
                let y = cx.tape.linear(x, w, b)?;
                let dropped = cx.tape.mul(x, mask)?;
                let down = cx.tape.matmul(dropped, a, false, true)?; // (.., r)
                let up = cx.tape.matmul(down, bm, false, true)?; // (.., out)
                let up = cx.tape.scale(up, scale)?;
                cx.tape.add(y, up)
            }
            // Otherwise the update's input is the layer's: one product with the merged weight
            // (see `Tape::lora_linear`).
            _ => cx.tape.lora_linear(x, w, b, a, bm, scale),
        }
    }
}

/// Inverted dropout's mask: each element kept with probability `1 - p` and scaled by
/// `1 / (1 - p)`, so the expectation is unchanged.
pub fn dropout_mask(rng: &mut Rng, n: usize, p: f32) -> Vec<f32> {
    let keep = 1.0 - p;
    (0..n)
        .map(|_| {
            if rng.uniform() < keep {
                1.0 / keep
            } else {
                0.0
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    #[test]
    fn dropout_masks_keep_the_expectation() {
        let mut rng = crate::rng::Rng::new(5);
        let m = super::dropout_mask(&mut rng, 100_000, 0.25);
        let zeros = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        let mean = m.iter().map(|&v| f64::from(v)).sum::<f64>() / m.len() as f64;
        assert!((zeros - 0.25).abs() < 0.01, "dropped {zeros}");
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    }
}
