//! AdamW with PyTorch's semantics, learning-rate schedules and global-norm clipping.

pub mod schedule;

use crate::backend::{AdamW, Backend, Result};
use crate::params::{ParamId, ParamStore};
use std::collections::BTreeMap;

pub use schedule::Schedule;

/// AdamW hyper-parameters (PyTorch defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The optimiser's state: first and second moments per trainable parameter and the step.
#[derive(Debug, Clone)]
pub struct Optimizer<B: Backend> {
    pub config: AdamWConfig,
    pub schedule: Schedule,
    /// Optimiser steps taken.
    pub step: u32,
    moments: BTreeMap<ParamId, (B::Tensor, B::Tensor)>,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(config: AdamWConfig, schedule: Schedule) -> Self {
        Self {
            config,
            schedule,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.config.lr * self.schedule.factor(self.step)
    }

    /// The first and second moments of a parameter (None before its first update).
    pub fn moments(&self, id: ParamId) -> Option<&(B::Tensor, B::Tensor)> {
        self.moments.get(&id)
    }

    /// Restores a parameter's moments (from a checkpoint).
    pub fn set_moments(&mut self, id: ParamId, m: B::Tensor, v: B::Tensor) {
        self.moments.insert(id, (m, v));
    }

    /// One update of every parameter in `grads`, with the gradients multiplied by
    /// `grad_scale` (the clipping coefficient).
    pub fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        grads: &[(ParamId, B::Tensor)],
        grad_scale: f32,
    ) -> Result<()> {
        let lr = self.lr();
        self.step += 1;
        let hp = AdamW {
            lr,
            beta1: self.config.beta1,
            beta2: self.config.beta2,
            eps: self.config.eps,
            weight_decay: self.config.weight_decay,
            step: self.step,
        };
        for (id, g) in grads {
            let p = store.get(*id).value.clone();
            let (m, v) = match self.moments.remove(id) {
                Some(mv) => mv,
                None => {
                    let s = backend.shape(&p);
                    (backend.zeros(&s)?, backend.zeros(&s)?)
                }
            };
            let (p, m, v) = backend.adamw(&p, g, &m, &v, grad_scale, hp)?;
            store.set_value(*id, p);
            self.moments.insert(*id, (m, v));
        }
        Ok(())
    }
}

/// PyTorch's `clip_grad_norm_` coefficient: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_coefficient(total_norm: f64, max_norm: f64) -> f32 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    (max_norm / (total_norm + 1e-6)).min(1.0) as f32
}
