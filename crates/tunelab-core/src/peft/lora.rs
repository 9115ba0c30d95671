//! LoRA (Hu et al., 2021): beside each targeted linear layer `W (out, in)`, a low-rank update
//! `y += (alpha / r) * x A^T B^T` with `A (r, in)` and `B (out, r)` — PEFT's names
//! (`<module>.lora_A.weight`, `<module>.lora_B.weight`) and orientation. `A` starts
//! Kaiming-uniform (bound `1/sqrt(in)`, PEFT's default), `B` at zero, so training starts
//! from the pretrained function.

use super::{
    Applied, Count, ExportKind, ModelDims, Opt, OptKind, PeftError, PeftKeys, PeftMethod, Shapes,
    Target, add_param, count_layers, names, object, target_layers,
};
use crate::Shape;
use crate::backend::{Backend, Result};
use crate::nn::{Ctx, LinearHook, dropout_mask};
use crate::params::ParamId;
use crate::tape::Var;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    pub dropout: f32,
    /// PEFT's `target_modules`: a layer matches when its name equals a pattern or ends with
    /// `.pattern`.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec!["query".into(), "value".into()],
        }
    }
}

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

impl<B: Backend> LinearHook<B> for LoraModule {
    fn product(&self, cx: &mut Ctx<'_, B>, x: Var, w: Var, b: Option<Var>) -> Option<Result<Var>> {
        Some(self.forward(cx, x, w, b))
    }

    fn uses_dropout(&self) -> bool {
        self.dropout > 0.0
    }
}

impl LoraModule {
    fn forward<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        x: Var,
        w: Var,
        b: Option<Var>,
    ) -> Result<Var> {
        let (a, bm, p, scale) = (cx.p(self.a), cx.p(self.b), self.dropout, self.scale);
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

const OPTIONS: &[Opt] = &[
    Opt {
        key: "r",
        flag: "lora-r",
        url: "r",
        label: "rank r",
        help: "LoRA rank. [default: 8]",
        kind: OptKind::Whole { min: 1, max: 1024 },
    },
    Opt {
        key: "alpha",
        flag: "lora-alpha",
        url: "alpha",
        label: "alpha",
        help: "LoRA alpha (updates are scaled by alpha / r). [default: 16]",
        kind: OptKind::Real {
            min: 0.0,
            min_open: true,
            max: f64::INFINITY,
        },
    },
    Opt {
        key: "dropout",
        flag: "lora-dropout",
        url: "dropout",
        label: "dropout",
        help: "LoRA dropout on the update's input while training (PEFT's `lora_dropout`). [default: 0]",
        kind: OptKind::Real {
            min: 0.0,
            min_open: false,
            max: 1.0,
        },
    },
    Opt {
        key: "target_modules",
        flag: "lora-targets",
        url: "targets",
        label: "target modules",
        help: "LoRA target modules (comma-separated names or name suffixes). [default: query,value]",
        kind: OptKind::Names,
    },
];

impl PeftMethod for LoraConfig {
    const NAME: &'static str = "lora";
    const TITLE: &'static str = "LoRA";
    const SUMMARY: &'static str =
        "low-rank updates A, B beside chosen linear layers; the weights stay frozen";
    const HELP: &'static str = "Adds two thin matrices next to chosen weight matrices and trains only those: a few hundred thousand numbers instead of millions. Small to save and share.";
    const LR: f64 = 5e-4;
    const OPTIONS: &'static [Opt] = OPTIONS;
    const EXPORT: ExportKind = ExportKind::Peft {
        peft_type: "LORA",
        keys: PeftKeys::Tuner,
    };

    fn validate(&self) -> std::result::Result<(), String> {
        if self.r == 0 {
            return Err("r must be at least 1".into());
        }
        if !self.alpha.is_finite() {
            return Err(format!("alpha must be a finite number, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.target_modules.iter().any(|t| t.trim().is_empty()) || self.target_modules.is_empty()
        {
            return Err("target_modules must name at least one layer, and no empty name".into());
        }
        Ok(())
    }

    fn apply<B: Backend>(&self, t: &mut Target<'_, B>) -> std::result::Result<Applied, PeftError> {
        for (name, ws) in target_layers(t, Self::TITLE, &self.target_modules)? {
            let (out, inp) = (ws.dims()[0], ws.dims()[1]);
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..self.r * inp)
                .map(|_| (2.0 * t.rng.uniform() - 1.0) * bound)
                .collect();
            let a = t.backend.upload(&a, &Shape::new([self.r, inp]))?;
            let b = t.backend.zeros(&Shape::new([out, self.r]))?;
            let a = add_param(t, Self::NAME, format!("{name}.lora_A.weight"), a)?;
            let b = add_param(t, Self::NAME, format!("{name}.lora_B.weight"), b)?;
            t.adapters.attach(
                &name,
                LoraModule {
                    a,
                    b,
                    scale: self.alpha / self.r as f32,
                    dropout: self.dropout,
                },
            );
        }
        Ok(Applied::default())
    }

    fn count(&self, m: &Shapes) -> std::result::Result<Count, PeftError> {
        let added = count_layers(Self::TITLE, &self.target_modules, m, |_, s| {
            self.r * (s.dims()[0] + s.dims()[1])
        })?;
        Ok(Count { unfrozen: 0, added })
    }

    fn describe(&self) -> String {
        format!(
            "LoRA (r {}, alpha {}, targets {:?})",
            self.r, self.alpha, self.target_modules
        )
    }

    fn peft_config(&self, _dims: &ModelDims) -> serde_json::Map<String, serde_json::Value> {
        object(serde_json::json!({
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
        }))
    }

    fn from_peft(cfg: &serde_json::Value) -> std::result::Result<Self, String> {
        let num = |k: &str| cfg.get(k).and_then(|v| v.as_f64());
        Ok(Self {
            r: cfg.get("r").and_then(|v| v.as_u64()).ok_or("missing `r`")? as usize,
            alpha: num("lora_alpha").ok_or("missing `lora_alpha`")? as f32,
            dropout: num("lora_dropout").unwrap_or(0.0) as f32,
            target_modules: names(cfg, "target_modules")?,
        })
    }
}
