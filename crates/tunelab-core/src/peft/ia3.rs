//! IA3 (Liu et al., 2022, "(IA)³"): learned vectors that rescale activations feature by
//! feature — PEFT's `IA3Config`. A targeted layer's output is multiplied by `l (out,)`; a
//! layer that is also a feed-forward module has its *input* multiplied by `l (in,)` instead.
//! The vectors start at one, so training starts from the pretrained function. PEFT's names
//! and shapes: `<module>.ia3_l`, `(out, 1)` or, for feed-forward layers, `(1, in)`.
//!
//! Matching follows PEFT: a layer is targeted when its name equals a `target_modules` entry
//! or ends with `.entry`; it is feed-forward when its name ends with a `feedforward_modules`
//! entry (no dot: `output.dense` also picks `attention.output.dense`).

use super::{
    Applied, Count, ExportKind, ModelDims, Opt, OptKind, PeftError, PeftKeys, PeftMethod, Shapes,
    Target, add_param, count_layers, names, object, target_layers,
};
use crate::Shape;
use crate::backend::{Backend, Result};
use crate::nn::{Ctx, LinearHook};
use crate::params::ParamId;
use crate::tape::Var;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ia3Config {
    /// Layers that get a scaling vector (PEFT's `target_modules`).
    pub target_modules: Vec<String>,
    /// Of those, the ones whose input is scaled (PEFT's `feedforward_modules`).
    pub feedforward_modules: Vec<String>,
}

impl Default for Ia3Config {
    /// PEFT's choice for BERT and RoBERTa: keys, values and the feed-forward output.
    fn default() -> Self {
        Self {
            target_modules: vec!["key".into(), "value".into(), "output.dense".into()],
            feedforward_modules: vec!["output.dense".into()],
        }
    }
}

impl Ia3Config {
    /// Whether `layer` is scaled at its input (PEFT's `_check_target_module_feedforward`).
    pub fn is_feedforward(&self, layer: &str) -> bool {
        self.feedforward_modules.iter().any(|f| layer.ends_with(f))
    }
}

/// A layer's scaling vector, stored in PEFT's 2-D shape.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scaling {
    l: ParamId,
    /// Scales the input (feed-forward layers) instead of the output.
    input: bool,
}

impl Scaling {
    fn apply<B: Backend>(&self, cx: &mut Ctx<'_, B>, x: Var) -> Result<Var> {
        let l = cx.p(self.l);
        let n = cx.tape.shape(l)?.numel();
        let l = cx.tape.reshape(l, &Shape::new([n]))?;
        cx.tape.scale_features(x, l)
    }
}

impl<B: Backend> LinearHook<B> for Scaling {
    fn input(&self, cx: &mut Ctx<'_, B>, x: Var) -> Result<Var> {
        if self.input { self.apply(cx, x) } else { Ok(x) }
    }

    fn output(&self, cx: &mut Ctx<'_, B>, y: Var) -> Result<Var> {
        if self.input { Ok(y) } else { self.apply(cx, y) }
    }
}

const OPTIONS: &[Opt] = &[
    Opt {
        key: "target_modules",
        flag: "ia3-targets",
        url: "ia3targets",
        label: "IA3 target modules",
        help: "IA3 target modules (comma-separated names or name suffixes). [default: key,value,output.dense]",
        kind: OptKind::Names,
    },
    Opt {
        key: "feedforward_modules",
        flag: "ia3-feedforward",
        url: "ia3ff",
        label: "IA3 feed-forward modules",
        help: "IA3: the target modules whose input is scaled instead of their output. [default: output.dense]",
        kind: OptKind::Names,
    },
];

impl PeftMethod for Ia3Config {
    const NAME: &'static str = "ia3";
    const TITLE: &'static str = "IA3";
    const SUMMARY: &'static str =
        "learned vectors rescale keys, values and feed-forward inputs; the weights stay frozen";
    const HELP: &'static str = "Learns one number per feature that turns chosen activations up or down — the keys, the values and the feed-forward layer — and nothing else: the fewest trainable numbers of all.";
    const LR: f64 = 1e-2;
    const OPTIONS: &'static [Opt] = OPTIONS;
    const EXPORT: ExportKind = ExportKind::Peft {
        peft_type: "IA3",
        keys: PeftKeys::Tuner,
    };

    fn validate(&self) -> std::result::Result<(), String> {
        if self.target_modules.is_empty() || self.target_modules.iter().any(|t| t.trim().is_empty())
        {
            return Err("target_modules must name at least one layer, and no empty name".into());
        }
        if let Some(f) = self
            .feedforward_modules
            .iter()
            .find(|f| !self.target_modules.contains(f))
        {
            return Err(format!(
                "feedforward_modules must be a subset of target_modules: `{f}` is not a target"
            ));
        }
        Ok(())
    }

    fn apply<B: Backend>(&self, t: &mut Target<'_, B>) -> std::result::Result<Applied, PeftError> {
        for (name, ws) in target_layers(t, Self::TITLE, &self.target_modules)? {
            let input = self.is_feedforward(&name);
            let shape = if input {
                Shape::new([1, ws.dims()[1]])
            } else {
                Shape::new([ws.dims()[0], 1])
            };
            let ones = t.backend.upload(&vec![1.0; shape.numel()], &shape)?;
            let l = add_param(t, Self::NAME, format!("{name}.ia3_l"), ones)?;
            t.adapters.attach(&name, Scaling { l, input });
        }
        Ok(Applied::default())
    }

    fn count(&self, m: &Shapes) -> std::result::Result<Count, PeftError> {
        let added = count_layers(Self::TITLE, &self.target_modules, m, |n, s| {
            s.dims()[usize::from(self.is_feedforward(n))]
        })?;
        Ok(Count { unfrozen: 0, added })
    }

    fn describe(&self) -> String {
        format!(
            "IA3 (targets {:?}, feed-forward {:?})",
            self.target_modules, self.feedforward_modules
        )
    }

    fn peft_config(&self, _dims: &ModelDims) -> serde_json::Map<String, serde_json::Value> {
        object(serde_json::json!({
            "target_modules": self.target_modules,
            "feedforward_modules": self.feedforward_modules,
            "fan_in_fan_out": false,
            "init_ia3_weights": true,
        }))
    }

    fn from_peft(cfg: &serde_json::Value) -> std::result::Result<Self, String> {
        Ok(Self {
            target_modules: names(cfg, "target_modules")?,
            feedforward_modules: names(cfg, "feedforward_modules")?,
        })
    }
}
