//! Shared layers. Model files build only from these, so PEFT methods that hook a layer by
//! name (LoRA, IA3) apply to every model without copying model code.

use crate::backend::{Backend, Result};
use crate::params::{Bound, ParamId};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use std::collections::HashMap;
use std::sync::Arc;

/// What a PEFT method attaches to a named linear layer. The layer runs its hooks in the
/// order they were attached: every hook's [`LinearHook::input`], the first
/// [`LinearHook::product`] that computes the layer (or the plain `x wᵀ + b`), then every
/// hook's [`LinearHook::output`]. Each method's hook lives in its own file under `peft/`.
/// Hooks hold parameter ids and numbers only, so they are `Send + Sync` everywhere (the
/// threaded wasm worker shares the model across its threads).
pub trait LinearHook<B: Backend>: std::fmt::Debug + Send + Sync {
    /// Changes the layer's input before the product (IA3 on feed-forward layers).
    fn input(&self, _cx: &mut Ctx<'_, B>, x: Var) -> Result<Var> {
        Ok(x)
    }
    /// Computes the layer in place of `x wᵀ + b` (LoRA); `None` leaves it to the next hook
    /// or the plain product.
    fn product(
        &self,
        _cx: &mut Ctx<'_, B>,
        _x: Var,
        _w: Var,
        _b: Option<Var>,
    ) -> Option<Result<Var>> {
        None
    }
    /// Changes the layer's output (IA3 on keys and values).
    fn output(&self, _cx: &mut Ctx<'_, B>, y: Var) -> Result<Var> {
        Ok(y)
    }
    /// Whether training draws random numbers (dropout) in this hook.
    fn uses_dropout(&self) -> bool {
        false
    }
}

/// What PEFT methods attach to named layers: each layer's hooks, in order.
#[derive(Debug)]
pub struct Adapters<B: Backend> {
    hooks: HashMap<String, Vec<Arc<dyn LinearHook<B>>>>,
}

impl<B: Backend> Default for Adapters<B> {
    fn default() -> Self {
        Self {
            hooks: HashMap::new(),
        }
    }
}

impl<B: Backend> Clone for Adapters<B> {
    fn clone(&self) -> Self {
        Self {
            hooks: self.hooks.clone(),
        }
    }
}

impl<B: Backend> Adapters<B> {
    /// Attaches `hook` to the linear layer `layer` (`encoder.layer.0.attention.self.query`).
    pub fn attach(&mut self, layer: &str, hook: impl LinearHook<B> + 'static) {
        self.hooks
            .entry(layer.to_string())
            .or_default()
            .push(Arc::new(hook));
    }

    /// The hooks of `layer`, in order (empty when none).
    pub fn of(&self, layer: &str) -> &[Arc<dyn LinearHook<B>>] {
        self.hooks.get(layer).map_or(&[], Vec::as_slice)
    }

    /// Whether any hook draws dropout masks while training.
    pub fn uses_dropout(&self) -> bool {
        self.hooks.values().flatten().any(|h| h.uses_dropout())
    }
}

/// One forward pass: the tape, the bound parameters and the adapters.
#[derive(Debug)]
pub struct Ctx<'a, B: Backend> {
    pub tape: &'a mut Tape<B>,
    pub bound: &'a Bound,
    pub adapters: &'a Adapters<B>,
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
        let adapters = cx.adapters;
        let hooks = adapters.of(&self.name);
        if hooks.is_empty() {
            return cx.tape.linear(x, w, b);
        }
        let mut x = x;
        for h in hooks {
            x = h.input(cx, x)?;
        }
        let mut y = None;
        for h in hooks {
            if let Some(r) = h.product(cx, x, w, b) {
                y = Some(r?);
                break;
            }
        }
        let mut y = match y {
            Some(y) => y,
            None => cx.tape.linear(x, w, b)?,
        };
        for h in hooks {
            y = h.output(cx, y)?;
        }
        Ok(y)
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
