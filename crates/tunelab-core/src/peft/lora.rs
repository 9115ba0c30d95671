//! LoRA (Hu et al., 2021): beside each targeted linear layer `W (out, in)`, a low-rank update
//! `y += (alpha / r) * x A^T B^T` with `A (r, in)` and `B (out, r)` — PEFT's names
//! (`<module>.lora_A.weight`, `<module>.lora_B.weight`) and orientation. `A` starts
//! Kaiming-uniform (bound `1/sqrt(in)`, PEFT's default), `B` at zero, so training starts
//! from the pretrained function.

use super::{Applied, PeftError, Target};
use crate::Shape;
use crate::backend::Backend;
use crate::nn::LoraModule;
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

/// PEFT's matching rule for a string `target_modules` entry.
pub fn matches(name: &str, pattern: &str) -> bool {
    name == pattern || name.ends_with(&format!(".{pattern}"))
}

impl LoraConfig {
    /// The options' ranges (the reason names the option).
    pub fn validate(&self) -> Result<(), String> {
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
}

pub fn apply<B: Backend>(cfg: &LoraConfig, t: &mut Target<'_, B>) -> Result<Applied, PeftError> {
    cfg.validate().map_err(|reason| PeftError::Invalid {
        method: "lora",
        reason,
    })?;
    let targets: Vec<String> = t
        .linear_names
        .iter()
        .filter(|n| cfg.target_modules.iter().any(|p| matches(n, p)))
        .cloned()
        .collect();
    if targets.is_empty() {
        return Err(PeftError::NoTargets {
            patterns: cfg.target_modules.clone(),
            example: t.linear_names.first().cloned().unwrap_or_default(),
        });
    }
    for name in targets {
        let w = t
            .store
            .id(&format!("{name}.weight"))
            .map_err(|e| PeftError::Invalid {
                method: "lora",
                reason: e.to_string(),
            })?;
        let ws = t.backend.shape(&t.store.get(w).value);
        let (out, inp) = (ws.dims()[0], ws.dims()[1]);
        let bound = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..cfg.r * inp)
            .map(|_| (2.0 * t.rng.uniform() - 1.0) * bound)
            .collect();
        let a = t.backend.upload(&a, &Shape::new([cfg.r, inp]))?;
        let b = t.backend.zeros(&Shape::new([out, cfg.r]))?;
        let dup = |e: crate::params::ParamError| PeftError::Invalid {
            method: "lora",
            reason: e.to_string(),
        };
        let a = t
            .store
            .insert(format!("{name}.lora_A.weight"), a, true)
            .map_err(dup)?;
        let b = t
            .store
            .insert(format!("{name}.lora_B.weight"), b, true)
            .map_err(dup)?;
        t.adapters.lora.insert(
            name,
            LoraModule {
                a,
                b,
                scale: cfg.alpha / cfg.r as f32,
                dropout: cfg.dropout,
            },
        );
    }
    Ok(Applied::default())
}
