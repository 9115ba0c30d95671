//! Resumable checkpoints: one safetensors file holding the trainable weights
//! (`param/<name>`), the AdamW moments (`adam_m/<name>`, `adam_v/<name>`) and, in its
//! metadata, the run's state: config, step, schedule position, data cursor, RNG state, best
//! metric. Frozen weights are not saved: they come from the base model.
//!
//! A run restored from a checkpoint at step k continues with exactly the losses of the run
//! that was never interrupted.

use super::{TaskKind, TrainConfig, TrainError, TrainState, Trainer};
use crate::backend::Backend;
use crate::data::{Labels, batch_order};
use crate::rng::Rng;
use crate::safetensors_io::{self, HostTensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The metadata key holding [`CheckpointMeta`] as JSON.
pub const META_KEY: &str = "tunelab_checkpoint";
const VERSION: u32 = 1;

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub version: u32,
    pub config: TrainConfig,
    pub kind: TaskKind,
    pub labels: Labels,
    pub state: TrainState,
    /// The optimiser's step counter (bias correction and the schedule use it).
    pub opt_step: u32,
    /// The masking RNG's state.
    pub rng: [u64; 4],
}

fn err(file: &str, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        file: file.into(),
        reason: reason.into(),
    }
}

/// Reads a checkpoint's metadata and tensors; `file` names it in errors.
pub fn read(
    file: &str,
    bytes: &[u8],
) -> Result<(CheckpointMeta, BTreeMap<String, HostTensor>), TrainError> {
    let meta = safetensors_io::read_metadata(file, bytes).map_err(|e| err(file, e.to_string()))?;
    let json = meta.get(META_KEY).ok_or_else(|| {
        err(
            file,
            "not a Tunelab checkpoint (no training state in its metadata)",
        )
    })?;
    let meta: CheckpointMeta =
        serde_json::from_str(json).map_err(|e| err(file, format!("bad training state: {e}")))?;
    if meta.version != VERSION {
        return Err(err(
            file,
            format!(
                "version {} (this build reads version {VERSION})",
                meta.version
            ),
        ));
    }
    let (tensors, _) = safetensors_io::read(file, bytes).map_err(|e| err(file, e.to_string()))?;
    Ok((meta, tensors))
}

impl<B: Backend> Trainer<B> {
    /// The run's state as checkpoint bytes (reads the trainable weights and moments back).
    pub async fn checkpoint(&self) -> Result<Vec<u8>, TrainError> {
        let mut tensors = BTreeMap::new();
        for id in self.store.trainable() {
            let p = self.store.get(id);
            let mut put = |prefix: &str, t: &B::Tensor, data: Vec<f32>| {
                tensors.insert(
                    format!("{prefix}/{}", p.name),
                    HostTensor {
                        shape: self.backend.shape(t),
                        data,
                    },
                );
            };
            put("param", &p.value, self.backend.download(&p.value).await?);
            if let Some((m, v)) = self.opt.moments(id) {
                put("adam_m", m, self.backend.download(m).await?);
                put("adam_v", v, self.backend.download(v).await?);
            }
        }
        if let Some(bad) = crate::trainer::step::first_non_finite(
            tensors.iter().map(|(n, t)| (n.as_str(), t.data.as_slice())),
        ) {
            return Err(err(
                "checkpoint",
                format!("`{bad}` is not finite: a diverged model is not saved"),
            ));
        }
        let meta = CheckpointMeta {
            version: VERSION,
            config: self.config.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            state: self.state.clone(),
            opt_step: self.opt.step,
            rng: self.rng.state(),
        };
        let json = serde_json::to_string(&meta).map_err(|e| err("checkpoint", e.to_string()))?;
        safetensors_io::write(
            "checkpoint",
            &tensors,
            Some(HashMap::from([(META_KEY.to_string(), json)])),
        )
        .map_err(|e| err("checkpoint", e.to_string()))
    }

    /// Restores a checkpoint written by [`Trainer::checkpoint`] into a trainer built the same
    /// way (same model, method and data). Every trainable parameter must be in it with its
    /// shape; nothing is changed unless all of it fits.
    pub fn restore(&mut self, file: &str, bytes: &[u8]) -> Result<(), TrainError> {
        let (meta, mut tensors) = read(file, bytes)?;
        if meta.kind != self.kind || meta.config.method != self.config.method {
            return Err(err(
                file,
                format!(
                    "it was saved for {:?} with method `{}`, this run is {:?} with `{}`",
                    meta.kind,
                    meta.config.method.name(),
                    self.kind,
                    self.config.method.name()
                ),
            ));
        }
        let mut updates = Vec::new();
        for id in self.store.trainable() {
            let p = self.store.get(id);
            let want = self.backend.shape(&p.value);
            let mut take = |prefix: &str| -> Result<Option<HostTensor>, TrainError> {
                match tensors.remove(&format!("{prefix}/{}", p.name)) {
                    Some(t) if t.shape == want => Ok(Some(t)),
                    Some(t) => Err(err(
                        file,
                        format!(
                            "`{}` has shape {} but the model needs {want}",
                            p.name, t.shape
                        ),
                    )),
                    None => Ok(None),
                }
            };
            let value = take("param")?
                .ok_or_else(|| err(file, format!("missing trainable parameter `{}`", p.name)))?;
            let moments = match (take("adam_m")?, take("adam_v")?) {
                (Some(m), Some(v)) => Some((m, v)),
                (None, None) => None,
                _ => return Err(err(file, format!("half of the moments of `{}`", p.name))),
            };
            updates.push((id, value, moments));
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(err(
                file,
                format!("tensor `{extra}` belongs to no trainable parameter of this model"),
            ));
        }
        for (id, value, moments) in updates {
            let v = self.backend.upload(&value.data, &value.shape)?;
            self.store.set_value(id, v);
            if let Some((m, v)) = moments {
                let m = self.backend.upload(&m.data, &m.shape)?;
                let v = self.backend.upload(&v.data, &v.shape)?;
                self.opt.set_moments(id, m, v);
            }
        }
        self.opt.step = meta.opt_step;
        self.rng = Rng::from_state(meta.rng);
        self.order = batch_order(self.train.len(), self.config.seed, meta.state.epoch);
        self.state = meta.state;
        Ok(())
    }
}
